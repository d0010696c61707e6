//! An audience's members as CSV, in the three layouts Segment's audience download offers. Pure
//! text formatting: the Profile API service (`GET .../audiences/{key}/export.csv`) and `corralctl
//! audiences export` (which asks that service) produce exactly these bytes.
//!
//! - [`Format::Unformatted`]: `id,external_ids`: the profile id and a JSON object of the
//!   profile's external ids, type → list of values.
//! - [`Format::Indexed`]: those two columns, then one column per external-id type found among the
//!   members (sorted); a type with several values on one profile gets indexed columns
//!   (`email`, `email_1`, `email_2`), as many as the profile with the most values needs.
//! - [`Format::SingleColumn`]: one column named after the chosen type, one row per value (a
//!   profile with two emails gives two rows); values are SHA-256 hex unless `hashed` is false.
//!
//! Rows follow the order of the members given (the service sorts them by profile id); ids within
//! a type keep their order. Fields are quoted as RFC 4180 says (comma, quote, CR or LF inside).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// One member: its profile id and external ids as (type, value), in the profile's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub profile_id: String,
    pub external_ids: Vec<(String, String)>,
}

/// A CSV layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Unformatted,
    Indexed,
    SingleColumn { id_type: String, hashed: bool },
}

impl Format {
    /// `unformatted`, `indexed`, or `single_column` (which needs `id_type`; `hashed` defaults to
    /// true). The error says what is accepted.
    pub fn parse(
        name: &str,
        id_type: Option<&str>,
        hashed: Option<bool>,
    ) -> Result<Format, String> {
        match name {
            "unformatted" => Ok(Format::Unformatted),
            "indexed" | "formatted" => Ok(Format::Indexed),
            "single_column" | "hashed" => match id_type.map(str::trim).filter(|t| !t.is_empty()) {
                Some(t) => Ok(Format::SingleColumn {
                    id_type: t.to_ascii_lowercase(),
                    hashed: hashed.unwrap_or(true),
                }),
                None => Err("format single_column needs id_type (for example email)".into()),
            },
            other => Err(format!(
                "unknown format `{other}`: use unformatted, indexed or single_column"
            )),
        }
    }
}

/// Lower-case hex SHA-256 of a value, as the single-column layout hashes it.
pub fn sha256_hex(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn by_type(m: &Member) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (t, v) in &m.external_ids {
        out.entry(t.as_str()).or_default().push(v.as_str());
    }
    out
}

fn ids_json(m: &Member) -> String {
    let map: serde_json::Map<String, serde_json::Value> = by_type(m)
        .into_iter()
        .map(|(t, vs)| (t.to_string(), serde_json::json!(vs)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn indexed_header(t: &str, i: usize) -> String {
    if i == 0 {
        t.to_string()
    } else {
        format!("{t}_{i}")
    }
}

/// The whole CSV (header line included, every line ending in `\n`).
pub fn to_csv(members: &[Member], format: &Format) -> String {
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    };
    match format {
        Format::Unformatted => {
            line(vec!["id".into(), "external_ids".into()]);
            for m in members {
                line(vec![m.profile_id.clone(), ids_json(m)]);
            }
        }
        Format::Indexed => {
            // Columns: every type found, as many times as the most values one profile has.
            let mut widths: BTreeMap<String, usize> = BTreeMap::new();
            for m in members {
                for (t, vs) in by_type(m) {
                    let w = widths.entry(t.to_string()).or_default();
                    *w = (*w).max(vs.len());
                }
            }
            let mut header = vec!["id".to_string(), "external_ids".to_string()];
            for (t, w) in &widths {
                header.extend((0..*w).map(|i| indexed_header(t, i)));
            }
            line(header);
            for m in members {
                let ids = by_type(m);
                let mut row = vec![m.profile_id.clone(), ids_json(m)];
                for (t, w) in &widths {
                    let vs = ids.get(t.as_str());
                    row.extend((0..*w).map(|i| {
                        vs.and_then(|vs| vs.get(i))
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    }));
                }
                line(row);
            }
        }
        Format::SingleColumn { id_type, hashed } => {
            line(vec![id_type.clone()]);
            for m in members {
                for (t, v) in &m.external_ids {
                    if t == id_type {
                        line(vec![if *hashed { sha256_hex(v) } else { v.clone() }]);
                    }
                }
            }
        }
    }
    out
}

/// Where the Profile API service listens by default (`make up`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8090";

/// Why [`fetch`] got no CSV.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] corral_telemetry::http_client::HttpClientError),
    #[error("the Profile API answered {status}: {body}")]
    Refused { status: u16, body: String },
}

impl Format {
    /// The query string of this format for the export route.
    pub fn query(&self) -> String {
        match self {
            Format::Unformatted => "format=unformatted".into(),
            Format::Indexed => "format=indexed".into(),
            Format::SingleColumn { id_type, hashed } => format!(
                "format=single_column&id_type={}&hashed={hashed}",
                corral_telemetry::http_client::encode_segment(id_type)
            ),
        }
    }
}

/// Asks the Profile API service at `addr` (`host:port`) for audience `key`'s members of `space`
/// as CSV (`GET /spaces/{space}/audiences/{key}/export`), with a token of the space.
pub fn fetch(
    addr: &str,
    space: &str,
    key: &str,
    format: &Format,
    token: Option<&str>,
    timeout: std::time::Duration,
) -> Result<String, FetchError> {
    use corral_telemetry::http_client::{encode_segment, get_with};
    let path = format!(
        "/spaces/{}/audiences/{}/export?{}",
        encode_segment(space),
        encode_segment(key),
        format.query()
    );
    let auth = token.map(|t| format!("Bearer {t}"));
    let (status, body) = get_with(addr, &path, timeout, auth.as_deref())?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(FetchError::Refused { status, body });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn members() -> Vec<Member> {
        let ids = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(t, i)| (t.to_string(), i.to_string()))
                .collect()
        };
        vec![
            Member {
                profile_id: "use_1".into(),
                external_ids: ids(&[
                    ("email", "ada@example.com"),
                    ("email", "ada@work.example"),
                    ("email", "a,\"da\"@example.com"),
                    ("user_id", "u1"),
                ]),
            },
            Member {
                profile_id: "use_2".into(),
                external_ids: ids(&[("anonymous_id", "an-2")]),
            },
        ]
    }

    #[test]
    fn unformatted_is_the_id_and_a_json_object_of_ids() {
        let csv = to_csv(&members(), &Format::Unformatted);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "id,external_ids");
        assert_eq!(
            lines[1],
            r#"use_1,"{""email"":[""ada@example.com"",""ada@work.example"",""a,\""da\""@example.com""],""user_id"":[""u1""]}""#
        );
        assert_eq!(lines[2], r#"use_2,"{""anonymous_id"":[""an-2""]}""#);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn indexed_adds_a_column_per_type_and_index() {
        let csv = to_csv(&members(), &Format::Indexed);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "id,external_ids,anonymous_id,email,email_1,email_2,user_id"
        );
        assert!(
            lines[1].ends_with(r#",,ada@example.com,ada@work.example,"a,""da""@example.com",u1"#),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with(",an-2,,,,"), "{}", lines[2]);
    }

    #[test]
    fn single_column_is_one_row_per_value_hashed_by_default() {
        let f = Format::parse("single_column", Some("EMAIL"), None).unwrap();
        let csv = to_csv(&members(), &f);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "email");
        assert_eq!(lines[1], sha256_hex("ada@example.com"));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let raw = Format::parse("single_column", Some("email"), Some(false)).unwrap();
        assert_eq!(
            to_csv(&members(), &raw).lines().nth(2),
            Some("ada@work.example")
        );
        assert!(Format::parse("single_column", None, None).is_err());
        assert!(Format::parse("pdf", None, None)
            .unwrap_err()
            .contains("unknown format"));
    }
}
