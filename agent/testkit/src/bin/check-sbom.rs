//! `check-sbom FILE`: exit 0 when FILE is a CycloneDX 1.5 SBOM valid against the committed
//! schema that lists docker.io, systemd, linux-image-amd64, tss-esapi and rustls (the image's
//! SBOM, checked by image/tests/inspect); else the problems on stderr and exit 1.

fn main() -> std::process::ExitCode {
    use swarmseal_testkit::sbom;
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check-sbom FILE");
        return std::process::ExitCode::from(2);
    };
    let doc: serde_json::Value = match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("check-sbom: {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut problems = sbom::schema_errors(&doc);
    problems.extend(sbom::missing(&doc, &sbom::REQUIRED_DEBS, &sbom::REQUIRED_CRATES).into_iter().map(|m| format!("does not list {m}")));
    for p in &problems {
        eprintln!("check-sbom: {path}: {p}");
    }
    if problems.is_empty() {
        println!("{path}: valid CycloneDX 1.5, lists {} and {}", sbom::REQUIRED_DEBS.join(", "), sbom::REQUIRED_CRATES.join(", "));
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
