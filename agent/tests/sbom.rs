//! The image's SBOM (docs/sbom.md) made the way `image/mkosi.postinst` makes it — a dpkg
//! status and copyright files under a root, `cargo metadata` and Cargo.lock of this very
//! workspace — then validated against the official CycloneDX 1.5 JSON schema committed in
//! `agent/release/schema/`, checked for the packages and crates it must list, made twice
//! (same bytes), and compared by `swarmseal update verify --against` (added, removed,
//! upgraded, the agent's version). The built image's own SBOM is checked by
//! `image/tests/inspect` with the same checks (`check-sbom`).
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;
use swarmseal_release::sbom::{self, Inventory, Subject};
use swarmseal_testkit::sbom::{missing, schema_errors, REQUIRED_CRATES, REQUIRED_DEBS};

const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: someone\nLicense: LGPL-2.1+\n\nFiles: debian/*\nCopyright: someone else\nLicense: GPL-2+\n\nLicense: LGPL-2.1+\n see /usr/share/common-licenses/LGPL-2.1\n";

/// A root with a dpkg status of `pkgs` (name, version, source) and their copyright files:
/// DEP-5 for all but `linux-image-amd64` (free text, as Debian's kernel has).
fn root(dir: &Path, pkgs: &[(&str, &str, &str)]) -> PathBuf {
    let r = dir.to_path_buf();
    std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
    let mut status = String::new();
    for (name, version, source) in pkgs {
        status += &format!("Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nSource: {source}\nVersion: {version}\nDescription: {name}\n the package\n\n");
        let doc = r.join("usr/share/doc").join(name);
        std::fs::create_dir_all(&doc).unwrap();
        let text = if *name == "linux-image-amd64" { "This is the Debian GNU/Linux prepackaged version of the Linux kernel.\n" } else { DEP5 };
        std::fs::write(doc.join("copyright"), text).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), status).unwrap();
    r
}

/// `cargo metadata` of this workspace for the image's target, as scripts/build-image writes it.
fn cargo_metadata(dir: &Path) -> (PathBuf, PathBuf) {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", "x86_64-unknown-linux-gnu"])
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta = dir.join("cargo-metadata.json");
    std::fs::write(&meta, out.stdout).unwrap();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--locked", "--offline", "-p", "swarmseal", "-e", "normal", "--target", "x86_64-unknown-linux-gnu", "--prefix", "none", "--format", "{p}"])
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("cargo-tree.txt"), out.stdout).unwrap();
    (meta, ws.join("Cargo.lock"))
}

const BASE: [(&str, &str, &str); 4] = [
    ("docker.io", "26.1.5+dfsg1-9+b9", "docker.io"),
    ("systemd", "257.9-1~deb13u1", "systemd"),
    ("linux-image-amd64", "6.12.57-1", "linux-signed-amd64"),
    ("libsystemd0", "257.9-1~deb13u1", "systemd"),
];

fn make(dir: &Path, pkgs: &[(&str, &str, &str)], image_version: &str, meta: &(PathBuf, PathBuf)) -> Vec<u8> {
    let debs = sbom::read_dpkg(&root(dir, pkgs)).unwrap();
    let (agent_version, crates) = sbom::read_crates(&meta.0, &meta.0.with_file_name("cargo-tree.txt"), &meta.1, "swarmseal").unwrap();
    sbom::document(&Subject { image_version: Some(image_version.into()), agent_version, epoch: 1764374400 }, &debs, &crates)
}

#[test]
fn the_sbom_is_valid_cyclonedx_lists_what_it_must_and_is_reproducible() {
    let t = std::time::Instant::now();
    let work = tempfile::tempdir().unwrap();
    let meta = cargo_metadata(work.path());
    let a = make(&work.path().join("a"), &BASE, "1.0.0", &meta);
    let doc: Value = serde_json::from_slice(&a).unwrap();
    let errors = schema_errors(&doc);
    assert!(errors.is_empty(), "not valid CycloneDX 1.5: {errors:#?}");
    let absent = missing(&doc, &REQUIRED_DEBS, &REQUIRED_CRATES);
    assert!(absent.is_empty(), "the SBOM does not list {absent:?}");

    // Crates: the agent's normal dependencies for x86_64 Linux, with Cargo.lock's checksums;
    // no dev-dependency (the testkit, jsonschema) and no other target's crate.
    let comps = doc["components"].as_array().unwrap();
    let crate_named = |n: &str| comps.iter().find(|c| c["name"] == n && c["purl"].as_str().unwrap().starts_with("pkg:cargo/"));
    let rustls = crate_named("rustls").unwrap();
    assert_eq!(rustls["hashes"][0]["alg"], "SHA-256");
    assert_eq!(rustls["hashes"][0]["content"].as_str().unwrap().len(), 64);
    // tempfile (and its fastrand): only a dev-dependency's feature (swarmseal-release/testing)
    // turns it on; cargo metadata's unified features list it, the build does not link it.
    for absent in ["swarmseal-testkit", "jsonschema", "windows-sys", "tempfile", "fastrand"] {
        assert!(crate_named(absent).is_none(), "{absent} is not linked into the agent");
    }
    let agent = comps.iter().find(|c| c["bom-ref"] == sbom::AGENT_REF).unwrap();
    assert_eq!(agent["version"], env!("CARGO_PKG_VERSION"));
    // Debian: the source package, and a license only where the copyright file is DEP-5.
    let deb = |n: &str| comps.iter().find(|c| c["name"] == n && c["purl"].as_str().unwrap().starts_with("pkg:deb/")).unwrap();
    assert_eq!(deb("libsystemd0")["properties"][0]["value"], "systemd");
    assert_eq!(deb("systemd")["licenses"][0]["license"]["name"], "GPL-2+");
    assert_eq!(deb("systemd")["licenses"][1]["license"]["name"], "LGPL-2.1+");
    assert_eq!(deb("linux-image-amd64")["licenses"][0]["expression"], "NOASSERTION");

    // The check can fail: a document without its format, or missing a package, is caught.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("bomFormat");
    assert!(!schema_errors(&broken).is_empty(), "the schema check can fail");
    let b = make(&work.path().join("b"), &BASE[1..], "1.0.0", &meta);
    assert_eq!(missing(&serde_json::from_slice(&b).unwrap(), &REQUIRED_DEBS, &[]), ["Debian package docker.io"]);

    // Reproducible: the same inputs in another directory, the same bytes.
    let again = make(&work.path().join("c"), &BASE, "1.0.0", &meta);
    assert!(a == again, "two SBOMs of the same inputs differ");
    eprintln!("sbom: {} bytes, {} components, {:?}", a.len(), comps.len(), t.elapsed());
}

#[test]
fn update_verify_names_what_a_release_changes() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let meta = cargo_metadata(w);
    let old = make(&w.join("old"), &BASE, "1.0.0", &meta);
    let new_pkgs = [
        ("docker.io", "26.1.5+dfsg1-9+b10", "docker.io"),
        ("systemd", "257.9-1~deb13u1", "systemd"),
        ("linux-image-amd64", "6.12.57-1", "linux-signed-amd64"),
        ("jq", "1.7.1-6", "jq"),
    ];
    let new = make(&w.join("new"), &new_pkgs, "1.1.0", &meta);
    std::fs::write(w.join("old.cdx.json"), &old).unwrap();

    // The library's diff of the two documents.
    let d = sbom::diff(&Inventory::parse(&old, Path::new("old")).unwrap(), &Inventory::parse(&new, Path::new("new")).unwrap());
    let names = |v: &[sbom::Named]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&d.debian.added), ["jq"]);
    assert_eq!(names(&d.debian.removed), ["libsystemd0"]);
    assert_eq!(d.debian.upgraded, [sbom::Change { name: "docker.io".into(), from: "26.1.5+dfsg1-9+b9".into(), to: "26.1.5+dfsg1-9+b10".into() }]);
    assert_eq!(d.debian.unchanged, 2);
    assert_eq!(d.image.as_ref().map(|c| (c.from.as_str(), c.to.as_str())), Some(("1.0.0", "1.1.0")));
    assert!(d.agent.is_none(), "same agent version");
    assert!(d.crates.added.is_empty() && d.crates.removed.is_empty() && d.crates.upgraded.is_empty());

    // `swarmseal update verify` on a signed release carrying `new`, against `old`.
    swarmseal_release::testing::rsa_key(w, "k");
    let rel = release_with_sbom(w, "1.1.0", &new);
    let cfg = w.join("config.toml");
    std::fs::write(&cfg, format!("state_dir = \"{}\"\n[update]\npublic_key = \"{}\"\nsbom = \"{}\"\n", w.join("state").display(), w.join("k.pem").display(), w.join("none.json").display())).unwrap();
    let run = |args: &[&str]| {
        let o = swarmseal(&[&["--config", cfg.to_str().unwrap(), "update", "verify"], args].concat(), &[], None);
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    for r in [rel.clone(), w.join("rel.tar")] {
        let (code, out, err) = run(&[r.to_str().unwrap(), "--against", w.join("old.cdx.json").to_str().unwrap()]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("release 1.1.0 verified"), "{out}");
        for line in ["swarmseal image: 1.0.0 → 1.1.0", "Debian packages: 1 added, 1 removed, 1 upgraded, 2 unchanged", "  added    jq 1.7.1-6", "  removed  libsystemd0 257.9-1~deb13u1", "  upgraded docker.io 26.1.5+dfsg1-9+b9 → 26.1.5+dfsg1-9+b10"] {
            assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
        }
    }
    let (code, out, err) = run(&[rel.to_str().unwrap(), "--json", "--against", w.join("old.cdx.json").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["changes"]["debian"]["added"][0]["name"], "jq");
    assert_eq!(j["changes"]["debian"]["upgraded"][0]["to"], "26.1.5+dfsg1-9+b10");
    // No SBOM of the running image and no --against: said, and still exit 0 (the release is good).
    let (code, out, _) = run(&[rel.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing to compare against: no SBOM of the running image at"), "{out}");
    // A running image's SBOM that is not one: a note, exit 0 (the release would be accepted).
    std::fs::write(w.join("none.json"), b"{ not json").unwrap();
    let (code, out, err) = run(&[rel.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("release 1.1.0 verified") && out.contains("the running image's SBOM cannot be read"), "{out}");
    // The same file given by hand with --against: the operator's usage error.
    let (code, out, err) = run(&[rel.to_str().unwrap(), "--against", w.join("none.json").to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--against"), "{err}");
    // A signed release whose SBOM is not CycloneDX: still verified (receive would take it), a note.
    release_with_sbom(w, "1.2.0", b"garbage");
    let (code, out, err) = run(&[w.join("rel.tar").to_str().unwrap(), "--against", w.join("old.cdx.json").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("release 1.2.0 verified") && out.contains("release 1.2.0's SBOM is not one this agent reads"), "{out}");
}

/// `w/rel/` and `w/rel.tar`: a release of `v` signed with `w/k.key` carrying `sbom` as
/// `swarmseal_V.sbom.cdx.json`, listed in SHA256SUMS.
fn release_with_sbom(w: &Path, v: &str, sbom_bytes: &[u8]) -> PathBuf {
    use swarmseal_release::Part;
    let rel = w.join("rel");
    std::fs::create_dir_all(&rel).unwrap();
    let names = [
        Part::Uki.file_name(v, ""),
        Part::Root.file_name(v, swarmseal_release::testing::U1),
        Part::Verity.file_name(v, swarmseal_release::testing::U2),
        Part::Sbom.file_name(v, ""),
    ];
    for (n, body) in names.iter().zip([vec![1u8; 1000], vec![2u8; 4096], vec![3u8; 512], sbom_bytes.to_vec()]) {
        std::fs::write(rel.join(n), body).unwrap();
    }
    let list = names.join(" ");
    swarmseal_release::testing::sh(&format!("cd rel && sha256sum {list} > SHA256SUMS && openssl dgst -sha256 -sign ../k.key -out SHA256SUMS.sig SHA256SUMS && tar --format=ustar -cf ../rel.tar SHA256SUMS SHA256SUMS.sig {list}"), w);
    rel
}
