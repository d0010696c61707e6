//! Privacy regulations in the admin API, shaped like Segment's Public API (docs/privacy.md):
//!
//! | method and path | what |
//! |---|---|
//! | `POST /spaces/{space}/regulations` | file one: `{regulationType, subjectType, subjectIds}` → `{"data": {"regulateId"}}` |
//! | `GET /spaces/{space}/regulations` | every regulation of the space, oldest first, with its status |
//! | `GET /spaces/{space}/regulations/{id}` | one, with its status and what is done and not done |
//!
//! Filing goes through `corral_ops::privacy::request`, the code behind `corralctl privacy`: the
//! same record in `definitions`, the same deletion request to identity. The status is
//! `corral_ops::privacy::checked`'s: a deletion is finished when identity carried it out and
//! compute committed the deletion of every profile (read from `profiles.merges` and compute's
//! backfill changelog, so a status answer costs a read of both topics). The answers never echo
//! the identifiers a regulation names.
//!
//! Bodies are parsed by hand from JSON, so each mistake gets its own message and `field`.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corral_ops::privacy::{self, Listed, Regulation, RegulationType, StatusParts, Subject};
use serde_json::{json, Value};

use crate::admin::{blocking, AdminError, AdminState};

/// At most this many identifiers per request (Segment's Public API limit).
pub const MAX_SUBJECTS: usize = 5_000;

/// Segment's name of a regulation type.
pub fn segment_type(t: RegulationType) -> &'static str {
    match t {
        RegulationType::Suppress => "SUPPRESS_ONLY",
        RegulationType::Delete => "DELETE_ONLY",
        RegulationType::SuppressWithDelete => "SUPPRESS_WITH_DELETE",
        RegulationType::Unsuppress => "UNSUPPRESS",
    }
}

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::field(StatusCode::BAD_REQUEST, "validation", field, message)
}

/// The regulation a request body asks for (its `created_at_ms` is `now_ms`).
pub fn parse_request(body: &[u8], now_ms: i64) -> Result<Regulation, AdminError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            "",
            format!("the body is not JSON ({e}); send {{\"regulationType\", \"subjectType\", \"subjectIds\"}}"),
        )
    })?;
    let Value::Object(o) = &v else {
        return Err(invalid(
            "",
            "the body must be an object {\"regulationType\", \"subjectType\", \"subjectIds\"}",
        ));
    };
    let text = |field: &str| -> Result<&str, AdminError> {
        match o.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
            None | Some(Value::Null) => Err(invalid(field, format!("{field} is required"))),
            Some(_) => Err(invalid(
                field,
                format!("{field} must be a non-empty string"),
            )),
        }
    };
    let regulation_type = match text("regulationType")?.to_ascii_uppercase().as_str() {
        "DELETE_ONLY" => RegulationType::Delete,
        "SUPPRESS_ONLY" => RegulationType::Suppress,
        "SUPPRESS_WITH_DELETE" => RegulationType::SuppressWithDelete,
        "UNSUPPRESS" => RegulationType::Unsuppress,
        t @ ("DELETE_INTERNAL" | "SUPPRESS_WITH_DELETE_INTERNAL" | "DELETE_ARCHIVE_ONLY") => {
            return Err(invalid(
                "regulationType",
                format!(
                    "{t} is not supported: a Corral deletion always reaches the destinations that \
                     have a deletion API; use DELETE_ONLY or SUPPRESS_WITH_DELETE"
                ),
            ))
        }
        other => {
            return Err(invalid(
                "regulationType",
                format!(
                    "regulationType `{other}` is not one of DELETE_ONLY, SUPPRESS_ONLY, \
                     SUPPRESS_WITH_DELETE, UNSUPPRESS"
                ),
            ))
        }
    };
    let subject_type = text("subjectType")?;
    if subject_type.eq_ignore_ascii_case("OBJECT_ID") {
        return Err(invalid(
            "subjectType",
            "OBJECT_ID (objects of cloud sources) is not supported: Corral has no cloud sources; \
             use USER_ID, ANONYMOUS_ID, EMAIL or another id type of the users collection",
        ));
    }
    let id_type = subject_type.to_ascii_lowercase();
    let ids = match o.get("subjectIds") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "subjectIds",
                "subjectIds is empty: name at least one identifier",
            ))
        }
        None | Some(Value::Null) => {
            return Err(invalid("subjectIds", "subjectIds is required"));
        }
        Some(_) => {
            return Err(invalid(
                "subjectIds",
                "subjectIds must be an array of strings",
            ))
        }
    };
    if ids.len() > MAX_SUBJECTS {
        return Err(invalid(
            "subjectIds",
            format!(
                "subjectIds has {} identifiers; at most {MAX_SUBJECTS} per request",
                ids.len()
            ),
        ));
    }
    let mut subjects: BTreeSet<Subject> = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(value) = id.as_str().filter(|s| !s.is_empty()) else {
            return Err(invalid(
                &format!("subjectIds[{i}]"),
                format!("subjectIds[{i}] must be a non-empty string"),
            ));
        };
        let s: Subject = format!("{id_type}:{value}")
            .parse()
            .map_err(|e: String| invalid("subjectType", e))?;
        subjects.insert(s);
    }
    Ok(Regulation {
        regulation_type,
        subjects: subjects.into_iter().collect(),
        created_at_ms: now_ms,
    })
}

/// A regulation as the admin API shows it: no identifiers, their count and type.
pub fn shape(l: &Listed, parts: &StatusParts) -> Value {
    let types: BTreeSet<String> = l
        .regulation
        .subjects
        .iter()
        .map(|s| s.id_type.to_ascii_uppercase())
        .collect();
    let mut out = json!({
        "id": l.id,
        "spaceId": l.space_id,
        "regulationType": segment_type(l.regulation.regulation_type),
        "subjectCount": l.regulation.subjects.len(),
        "createdAt": crate::store::iso(l.regulation.created_at_ms),
        // Segment's overall statuses; a pending Corral regulation is still being carried out.
        "overallStatus": if parts.status == "finished" { "FINISHED" } else { "RUNNING" },
        "status": parts.status,
        "done": parts.done,
        "notDone": parts.left,
    });
    if let (1, Some(t)) = (types.len(), types.iter().next()) {
        out["subjectType"] = json!(t);
    }
    out
}

async fn create(st: AdminState, space: String, body: Bytes) -> Result<Response, AdminError> {
    let regulation = parse_request(&body, corral_ops::now_ms())?;
    blocking(move || {
        let id = privacy::new_id();
        privacy::request(
            &st.bootstrap,
            &st.kafka,
            &st.privacy.request,
            &space,
            &id,
            &regulation,
            Some("profile-api"),
        )
        .map_err(AdminError::internal)?;
        tracing::info!(
            regulation = id,
            kind = regulation.regulation_type.as_str(),
            identifiers = regulation.subjects.len(),
            "regulation filed"
        );
        Ok(Json(json!({"data": {"regulateId": id}})).into_response())
    })
    .await
}

async fn list(st: AdminState, space: String) -> Result<Response, AdminError> {
    blocking(move || {
        let all = privacy::checked(
            &st.bootstrap,
            &st.kafka,
            &st.privacy.request.definitions,
            Some(&space),
            None,
            &st.privacy.progress,
        )
        .map_err(AdminError::internal)?;
        let items: Vec<Value> = all.iter().map(|(l, p)| shape(l, p)).collect();
        let n = items.len();
        Ok(Json(json!({"data": {
            "regulations": items,
            "pagination": {"current": "", "totalEntries": n},
        }}))
        .into_response())
    })
    .await
}

async fn get_one(st: AdminState, space: String, id: String) -> Result<Response, AdminError> {
    blocking(move || {
        let found = privacy::checked(
            &st.bootstrap,
            &st.kafka,
            &st.privacy.request.definitions,
            Some(&space),
            Some(&id),
            &st.privacy.progress,
        )
        .map_err(AdminError::internal)?;
        let (l, p) = found
            .first()
            .ok_or_else(|| AdminError::not_found("regulation", &id, &space))?;
        Ok(Json(json!({"data": {"regulation": shape(l, p)}})).into_response())
    })
    .await
}

/// The regulation routes (merged into [`crate::admin::router`]).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/spaces/{space}/regulations",
            get(|State(st): State<AdminState>, Path(space): Path<String>| list(st, space)).post(
                |State(st): State<AdminState>, Path(space): Path<String>, body: Bytes| {
                    create(st, space, body)
                },
            ),
        )
        .route(
            "/spaces/{space}/regulations/{id}",
            get(
                |State(st): State<AdminState>, Path((space, id)): Path<(String, String)>| {
                    get_one(st, space, id)
                },
            ),
        )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn err(body: Value) -> (StatusCode, Value) {
        let e = parse_request(body.to_string().as_bytes(), 1).unwrap_err();
        (e.status(), e.first())
    }

    #[test]
    fn segment_bodies_become_regulations() {
        let r = parse_request(
            br#"{"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": ["ada", "bob", "ada"]}"#,
            7,
        )
        .unwrap();
        assert_eq!(r.regulation_type, RegulationType::SuppressWithDelete);
        assert_eq!(
            r.subjects,
            vec![
                Subject::new("user_id", "ada"),
                Subject::new("user_id", "bob")
            ]
        );
        assert_eq!(r.created_at_ms, 7);
        let r = parse_request(
            br#"{"regulationType": "delete_only", "subjectType": "EMAIL", "subjectIds": ["a:b@x.io"]}"#,
            1,
        )
        .unwrap();
        assert_eq!(r.regulation_type, RegulationType::Delete);
        assert_eq!(r.subjects, vec![Subject::new("email", "a:b@x.io")]);
        for t in [
            RegulationType::Suppress,
            RegulationType::Delete,
            RegulationType::SuppressWithDelete,
            RegulationType::Unsuppress,
        ] {
            let body = json!({"regulationType": segment_type(t), "subjectType": "ANONYMOUS_ID", "subjectIds": ["a1"]});
            assert_eq!(
                parse_request(body.to_string().as_bytes(), 1)
                    .unwrap()
                    .regulation_type,
                t
            );
        }
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let ok = json!({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": ["ada"]});
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([1]), "", "must be an object"),
            (
                with("regulationType", json!("ERASE")),
                "regulationType",
                "not one of DELETE_ONLY",
            ),
            (
                with("regulationType", json!("DELETE_INTERNAL")),
                "regulationType",
                "not supported",
            ),
            (
                with("regulationType", Value::Null),
                "regulationType",
                "is required",
            ),
            (
                with("subjectType", json!("OBJECT_ID")),
                "subjectType",
                "no cloud sources",
            ),
            (
                with("subjectType", json!("user id")),
                "subjectType",
                "letters, digits and _",
            ),
            (
                with("subjectType", json!(3)),
                "subjectType",
                "non-empty string",
            ),
            (with("subjectIds", json!([])), "subjectIds", "is empty"),
            (
                with("subjectIds", json!("ada")),
                "subjectIds",
                "array of strings",
            ),
            (
                with("subjectIds", json!(["ada", ""])),
                "subjectIds[1]",
                "non-empty string",
            ),
            (
                with("subjectIds", json!(vec!["x"; MAX_SUBJECTS + 1])),
                "subjectIds",
                "at most 5000",
            ),
        ];
        for (body, field, says) in cases {
            let (status, e) = err(body.clone());
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e["type"], "validation");
            let want = if field.is_empty() {
                Value::Null
            } else {
                json!(field)
            };
            assert_eq!(e["field"], want, "{body}: {e}");
            assert!(e["message"].as_str().unwrap().contains(says), "{body}: {e}");
        }
        let e = parse_request(b"{", 1).unwrap_err();
        assert!(e.first()["message"].as_str().unwrap().contains("not JSON"));
    }

    #[test]
    fn answers_never_name_the_identifiers() {
        let l = Listed {
            space_id: "default".into(),
            id: "reg-1".into(),
            regulation: Regulation {
                regulation_type: RegulationType::Delete,
                subjects: vec![Subject::new("email", "ada@x.io")],
                created_at_ms: 0,
            },
            status: "pending".into(),
            detail: String::new(),
        };
        let parts = StatusParts {
            status: "pending",
            done: vec![],
            left: vec!["identity has not carried out the request yet".into()],
        };
        let v = shape(&l, &parts);
        assert_eq!(v["regulationType"], "DELETE_ONLY");
        assert_eq!(v["subjectType"], "EMAIL");
        assert_eq!(v["subjectCount"], 1);
        assert_eq!(v["overallStatus"], "RUNNING");
        assert!(!v.to_string().contains("ada@x.io"));
    }
}
