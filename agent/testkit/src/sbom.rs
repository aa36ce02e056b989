//! The image SBOM's checks, shared by the agent's tests (`agent/tests/sbom.rs`) and
//! `image/tests/inspect` (through the `check-sbom` binary): valid against the official
//! CycloneDX 1.5 JSON schema committed in `agent/release/schema/` (offline: its two referenced
//! schemas are registered, nothing is fetched), and naming the components it must name.

use serde_json::Value;

const BOM: &str = include_str!("../../release/schema/bom-1.5.schema.json");
const SPDX: &str = include_str!("../../release/schema/spdx.schema.json");
const JSF: &str = include_str!("../../release/schema/jsf-0.82.schema.json");

/// The components every image SBOM must list: Debian packages and agent crates.
pub const REQUIRED_DEBS: [&str; 3] = ["docker.io", "systemd", "linux-image-amd64"];
pub const REQUIRED_CRATES: [&str; 2] = ["tss-esapi", "rustls"];

/// Every schema violation of `doc` (empty: valid), as `message at /json/pointer`.
pub fn schema_errors(doc: &Value) -> Vec<String> {
    let parse = |s: &str| -> Value { serde_json::from_str(s).expect("a committed schema is JSON") };
    let registry = jsonschema::Registry::new()
        .add("http://cyclonedx.org/schema/spdx.schema.json", parse(SPDX))
        .and_then(|r| r.add("http://cyclonedx.org/schema/jsf-0.82.schema.json", parse(JSF)))
        .and_then(|r| r.prepare())
        .expect("the referenced schemas register");
    let validator = jsonschema::options().with_registry(&registry).build(&parse(BOM)).expect("the CycloneDX 1.5 schema compiles");
    validator.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path())).collect()
}

/// Which of `debs` (purl `pkg:deb/`) and `crates` (purl `pkg:cargo/`) `doc` does not list.
pub fn missing(doc: &Value, debs: &[&str], crates: &[&str]) -> Vec<String> {
    let listed = |kind: &str, name: &str| {
        doc["components"].as_array().into_iter().flatten().any(|c| {
            c["name"] == name && c["purl"].as_str().is_some_and(|p| p.starts_with(&format!("pkg:{kind}/")))
        })
    };
    let debs = debs.iter().filter(|n| !listed("deb", n)).map(|n| format!("Debian package {n}"));
    let crates = crates.iter().filter(|n| !listed("cargo", n)).map(|n| format!("crate {n}"));
    debs.chain(crates).collect()
}
