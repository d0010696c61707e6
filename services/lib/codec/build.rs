//! Embeds every schema version kept under `schemas/history/` so the decoder knows all writer
//! schemas without anyone editing a list by hand when a version is added.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let history = manifest.join("../../../schemas/history");
    println!("cargo:rerun-if-changed={}", history.display());

    let mut entries: Vec<(String, u32, PathBuf)> = Vec::new();
    if let Ok(dir) = fs::read_dir(&history) {
        for entry in dir.flatten() {
            let path = entry.path();
            let Some(file) = path
                .file_name()
                .and_then(|f| f.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            // <topic>.v<N>.avsc, where <topic> itself contains dots.
            let Some(stem) = file.strip_suffix(".avsc") else {
                continue;
            };
            let Some((topic, version)) = stem.rsplit_once(".v") else {
                panic!("schemas/history/{file}: expected <topic>.v<N>.avsc");
            };
            let version: u32 = version
                .parse()
                .unwrap_or_else(|_| panic!("schemas/history/{file}: version is not a number"));
            println!("cargo:rerun-if-changed={}", path.display());
            let abs = fs::canonicalize(&path).unwrap_or(path);
            entries.push((topic.to_string(), version, abs));
        }
    }
    entries.sort();

    let mut out = String::from(
        "/// (topic, version, schema JSON) for every file in schemas/history/.\n\
         pub(crate) const HISTORY: &[(&str, u32, &str)] = &[\n",
    );
    for (topic, version, path) in &entries {
        out.push_str(&format!(
            "    ({topic:?}, {version}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    if let Err(e) = fs::write(out_dir.join("history.rs"), out) {
        panic!("cannot write history.rs: {e}");
    }
}
