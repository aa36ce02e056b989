//! The image's SBOM: a CycloneDX 1.5 JSON document (<https://cyclonedx.org/docs/1.5/json/>)
//! listing every Debian package of the image and every Rust crate linked into the agent.
//! `swarmseal-release sbom` writes it at build time (`image/mkosi.postinst`) to
//! `/usr/share/swarmseal/sbom.cdx.json` inside the verity root; a release carries a copy
//! ([`crate::Part::Sbom`], `swarmseal_V.sbom.cdx.json`); `swarmseal update verify` compares two with [`diff`]. Why
//! CycloneDX and what each field holds: `docs/sbom.md`.
//!
//! Reproducible: no wall clock (the timestamp is `SOURCE_DATE_EPOCH`), components sorted, the
//! serial number a UUID (RFC 4122 version 5) of the rest of the document's bytes, so the same
//! inputs give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// Where the SBOM sits in the image's root.
pub const IMAGE_PATH: &str = "usr/share/swarmseal/sbom.cdx.json";
/// The agent's component `bom-ref`.
pub const AGENT_REF: &str = "swarmseal-agent";
/// Largest SBOM read back (the image's is ~200 KB).
pub const MAX_SBOM: u64 = 16 << 20;

/// Why an SBOM could not be made or read. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An input (dpkg status, Cargo.lock, cargo metadata) or an SBOM is not what it should be.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SbomError + '_ {
    move |source| SbomError::Io { path: path.to_path_buf(), source }
}

fn invalid(path: &Path, message: impl Into<String>) -> SbomError {
    SbomError::Invalid { path: path.to_path_buf(), message: message.into() }
}

/// One installed Debian package (`/var/lib/dpkg/status`, Status `install ok installed`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package (`Source:` without its version; the package's name when absent).
    pub source: String,
    /// The `License:` short names of its DEP-5 `copyright` file, sorted; empty when the file is
    /// missing or not machine-readable (the SBOM then says NOASSERTION).
    pub licenses: Vec<String>,
}

/// One crate linked into the agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `registry+https://…`, `git+…`; `None` for the workspace's own (path) crates.
    pub source: Option<String>,
    /// Cargo.lock's `checksum` (SHA-256 of the `.crate`), for registry crates.
    pub checksum: Option<String>,
    /// The crate's `license` (an SPDX expression), when it declares one.
    pub license: Option<String>,
}

/// The Debian packages installed under `root`: its dpkg status and `usr/share/doc/PKG/copyright`
/// files. Sorted by name.
pub fn read_dpkg(root: &Path) -> Result<Vec<DebPackage>, SbomError> {
    let path = root.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let f = fields(para);
        let get = |k: &str| f.get(k).map(|v| v.trim().to_string());
        // `want flag status` (dpkg(1)): installed and ok, whether wanted as `install` or `hold`.
        let status = get("Status").unwrap_or_default();
        if !matches!(status.split_whitespace().collect::<Vec<_>>()[..], ["install" | "hold", "ok", "installed"]) {
            continue;
        }
        let (Some(name), Some(version)) = (get("Package"), get("Version")) else {
            return Err(invalid(&path, format!("an installed package without Package or Version: {:?}", para.lines().next().unwrap_or(""))));
        };
        let source = get("Source").and_then(|s| s.split_whitespace().next().map(str::to_string)).unwrap_or_else(|| name.clone());
        let licenses = copyright_file(root, &name).map(|t| dep5_licenses(&t)).unwrap_or_default();
        out.push(DebPackage { architecture: get("Architecture").unwrap_or_default(), name, version, source, licenses });
    }
    out.sort();
    Ok(out)
}

/// A deb822 paragraph's fields: name → value (continuation lines joined with `\n`).
fn fields(para: &str) -> BTreeMap<&str, String> {
    let mut f: BTreeMap<&str, String> = BTreeMap::new();
    let mut last: Option<&str> = None;
    for line in para.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.and_then(|k| f.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            f.insert(k, v.trim().to_string());
            last = Some(k);
        }
    }
    f
}

/// `usr/share/doc/NAME/copyright` under `root`, following symlinks (absolute ones re-rooted:
/// `libfoo-dev`'s doc dir is often a link to `libfoo`'s).
fn copyright_file(root: &Path, name: &str) -> Option<String> {
    let mut p = PathBuf::from(format!("usr/share/doc/{name}/copyright"));
    for _ in 0..8 {
        // Resolve each component that is a symlink, inside root.
        let mut cur = PathBuf::new();
        let mut changed = false;
        for c in p.components() {
            cur.push(c);
            if let Ok(t) = std::fs::read_link(root.join(&cur)) {
                let base = cur.parent().map(Path::to_path_buf).unwrap_or_default();
                let rest: PathBuf = p.strip_prefix(&cur).ok()?.to_path_buf();
                let t = if t.is_absolute() { t.strip_prefix("/").ok()?.to_path_buf() } else { base.join(t) };
                p = inside_root(&t.join(rest));
                changed = true;
                break;
            }
        }
        if !changed {
            return std::fs::read_to_string(root.join(&p)).ok();
        }
    }
    None
}

/// `p` (relative to the root) with `.` and `..` resolved lexically, never above the root: a
/// link `../../../../etc/x` names the root's `etc/x`, as it would inside the booted image, not
/// a file of the build host.
fn inside_root(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The licenses of a machine-readable copyright file (DEP-5, <https://dep-team.pages.debian.net/deps/dep5/>):
/// the first line of every `License:` field of its header and `Files:` paragraphs, distinct,
/// sorted. Empty when the file is not DEP-5 (no `Format:` naming copyright-format).
pub fn dep5_licenses(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let mut paras = text.split("\n\n").filter(|p| !p.trim().is_empty());
    let Some(header) = paras.next() else { return Vec::new() };
    let h = fields(header);
    if !h.get("Format").is_some_and(|f| f.contains("copyright-format")) {
        return Vec::new();
    }
    let mut set = BTreeSet::new();
    for f in std::iter::once(h.clone()).chain(paras.map(fields)) {
        let is_files = f.contains_key("Files") || f.contains_key("Format");
        if let (true, Some(l)) = (is_files, f.get("License")) {
            let first = l.lines().next().unwrap_or("").trim();
            if !first.is_empty() {
                set.insert(first.to_string());
            }
        }
    }
    set.into_iter().collect()
}

/// The crates a build of the agent links, as `cargo tree --locked -p swarmseal -e normal
/// --target x86_64-unknown-linux-gnu --prefix none --format {p}` prints them (`name vX.Y.Z`,
/// then ` (path)` or ` (*)` for some): `(name, version)` pairs. `cargo metadata`'s resolve graph
/// alone over-lists: it unifies features across the workspace, dev-dependencies' included, so
/// an optional crate a test feature turns on (`tempfile` through `swarmseal-release/testing`)
/// looks linked; `cargo tree` resolves features as the build does (resolver 2).
fn read_linked(tree_path: &Path) -> Result<BTreeSet<(String, String)>, SbomError> {
    let text = std::fs::read_to_string(tree_path).map_err(io(tree_path))?;
    let mut set = BTreeSet::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut w = line.split_whitespace();
        let (Some(name), Some(version)) = (w.next(), w.next().and_then(|v| v.strip_prefix('v'))) else {
            return Err(invalid(tree_path, format!("line {}: not `name vVERSION` (cargo tree --prefix none --format {{p}})", i + 1)));
        };
        set.insert((name.to_string(), version.to_string()));
    }
    if set.is_empty() {
        return Err(invalid(tree_path, "lists no crate"));
    }
    Ok(set)
}

/// The crates linked into package `root_pkg` for `x86_64-unknown-linux-gnu`: `metadata` is
/// `cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu`
/// (its resolve graph, walked over normal dependencies only: no dev- or build-dependencies),
/// kept to what `tree_path` ([`read_linked`]) says the build links, checksums from
/// `Cargo.lock`. Returns the root package's version and the crates (without the root), sorted.
pub fn read_crates(metadata_path: &Path, tree_path: &Path, lock_path: &Path, root_pkg: &str) -> Result<(String, Vec<Crate>), SbomError> {
    let linked = read_linked(tree_path)?;
    #[derive(Deserialize)]
    struct Meta {
        packages: Vec<Pkg>,
        resolve: Option<Resolve>,
    }
    #[derive(Deserialize)]
    struct Pkg {
        id: String,
        name: String,
        version: String,
        source: Option<String>,
        license: Option<String>,
    }
    #[derive(Deserialize)]
    struct Resolve {
        nodes: Vec<Node>,
    }
    #[derive(Deserialize)]
    struct Node {
        id: String,
        deps: Vec<Dep>,
    }
    #[derive(Deserialize)]
    struct Dep {
        pkg: String,
        dep_kinds: Vec<DepKind>,
    }
    #[derive(Deserialize)]
    struct DepKind {
        kind: Option<String>,
    }
    #[derive(Deserialize)]
    struct Lock {
        package: Vec<LockPkg>,
    }
    #[derive(Deserialize)]
    struct LockPkg {
        name: String,
        version: String,
        source: Option<String>,
        checksum: Option<String>,
    }
    let text = std::fs::read_to_string(metadata_path).map_err(io(metadata_path))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| invalid(metadata_path, format!("not `cargo metadata --format-version 1` output: {e}")))?;
    let text = std::fs::read_to_string(lock_path).map_err(io(lock_path))?;
    let lock: Lock = toml::from_str(&text).map_err(|e| invalid(lock_path, format!("not a Cargo.lock: {e}")))?;
    let sums: BTreeMap<(&str, &str, Option<&str>), &str> = lock
        .package
        .iter()
        .filter_map(|p| Some(((p.name.as_str(), p.version.as_str(), p.source.as_deref()), p.checksum.as_deref()?)))
        .collect();
    let pkgs: BTreeMap<&str, &Pkg> = meta.packages.iter().map(|p| (p.id.as_str(), p)).collect();
    let nodes: BTreeMap<&str, &Node> = meta.resolve.as_ref().map(|r| r.nodes.iter().map(|n| (n.id.as_str(), n)).collect()).unwrap_or_default();
    let root = meta
        .packages
        .iter()
        .find(|p| p.name == root_pkg && p.source.is_none())
        .ok_or_else(|| invalid(metadata_path, format!("no workspace package {root_pkg}")))?;
    let mut seen = BTreeSet::from([root.id.as_str()]);
    let mut todo = vec![root.id.as_str()];
    while let Some(id) = todo.pop() {
        let node = nodes.get(id).ok_or_else(|| invalid(metadata_path, format!("{id} is not in the resolve graph (run cargo metadata without --no-deps)")))?;
        for d in &node.deps {
            if d.dep_kinds.iter().any(|k| k.kind.is_none()) && seen.insert(d.pkg.as_str()) {
                todo.push(d.pkg.as_str());
            }
        }
    }
    seen.remove(root.id.as_str());
    let mut crates = Vec::new();
    for id in seen {
        let p = pkgs.get(id).ok_or_else(|| invalid(metadata_path, format!("{id} is in the resolve graph but not in packages")))?;
        if !linked.contains(&(p.name.clone(), p.version.clone())) {
            continue;
        }
        let checksum = sums.get(&(p.name.as_str(), p.version.as_str(), p.source.as_deref())).map(|s| s.to_string());
        if p.source.as_deref().is_some_and(|s| s.starts_with("registry+")) && checksum.is_none() {
            return Err(invalid(lock_path, format!("no checksum for {} {} (is the lock file the one the agent was built with?)", p.name, p.version)));
        }
        crates.push(Crate { name: p.name.clone(), version: p.version.clone(), source: p.source.clone(), checksum, license: p.license.clone() });
    }
    crates.sort();
    Ok((root.version.clone(), crates))
}

/// What the document describes besides its components.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `IMAGE_VERSION` (the image component's version); `None` when unknown.
    pub image_version: Option<String>,
    /// The agent's crate version.
    pub agent_version: String,
    /// `SOURCE_DATE_EPOCH`: the document's timestamp.
    pub epoch: u64,
}

/// The CycloneDX 1.5 document, serialized (pretty, sorted keys, trailing newline). Same
/// inputs, same bytes.
pub fn document(subject: &Subject, debs: &[DebPackage], crates: &[Crate]) -> Vec<u8> {
    let mut components: Vec<Value> = debs.iter().map(deb_component).collect();
    components.push(json!({
        "type": "application",
        "bom-ref": AGENT_REF,
        "name": "swarmseal",
        "version": subject.agent_version,
        "description": "the swarmseal agent (/usr/bin/swarmseal)",
        "purl": format!("pkg:cargo/swarmseal@{}", purl_enc(&subject.agent_version)),
    }));
    components.extend(crates.iter().map(crate_component));
    let licensed = debs.iter().filter(|d| !d.licenses.is_empty()).count();
    let mut doc = json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "",
        "version": 1,
        "metadata": {
            "timestamp": utc(subject.epoch),
            "tools": {"components": [{"type": "application", "name": "swarmseal-release", "version": env!("CARGO_PKG_VERSION")}]},
            "component": {
                "type": "operating-system",
                "bom-ref": "swarmseal-image",
                "name": "swarmseal",
                "version": subject.image_version.clone().unwrap_or_else(|| "unknown".into()),
            },
            "properties": [
                {"name": "swarmseal:debian-packages", "value": debs.len().to_string()},
                {"name": "swarmseal:debian-packages-with-license", "value": licensed.to_string()},
                {"name": "swarmseal:agent-crates", "value": crates.len().to_string()},
            ],
        },
        "components": components,
    });
    let mut bytes = to_bytes(&doc);
    doc["serialNumber"] = Value::String(format!("urn:uuid:{}", uuid5(&bytes)));
    bytes = to_bytes(&doc);
    bytes
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // serde_json's map is a BTreeMap here (no preserve_order): keys come out sorted.
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

fn deb_component(d: &DebPackage) -> Value {
    let mut purl = format!("pkg:deb/debian/{}@{}", purl_enc(&d.name), purl_enc(&d.version));
    let mut q = Vec::new();
    if !d.architecture.is_empty() {
        q.push(format!("arch={}", purl_enc(&d.architecture)));
    }
    if d.source != d.name {
        q.push(format!("upstream={}", purl_enc(&d.source)));
    }
    if !q.is_empty() {
        purl = format!("{purl}?{}", q.join("&"));
    }
    let licenses: Vec<Value> = if d.licenses.is_empty() {
        vec![json!({"expression": "NOASSERTION"})]
    } else {
        d.licenses.iter().map(|l| json!({"license": {"name": l}})).collect()
    };
    json!({
        "type": "library",
        // Unique per package and architecture (a Multi-Arch: same package can be installed twice).
        "bom-ref": if d.architecture.is_empty() { format!("deb:{}", d.name) } else { format!("deb:{}:{}", d.name, d.architecture) },
        "name": d.name,
        "version": d.version,
        "purl": purl,
        "licenses": licenses,
        "properties": [{"name": "debian:source", "value": d.source}],
    })
}

fn crate_component(c: &Crate) -> Value {
    let mut v = json!({
        "type": "library",
        "bom-ref": format!("cargo:{}@{}", c.name, c.version),
        "name": c.name,
        "version": c.version,
        "purl": format!("pkg:cargo/{}@{}", purl_enc(&c.name), purl_enc(&c.version)),
        "properties": [{"name": "cargo:source", "value": c.source.as_deref().unwrap_or("path (this workspace)")}],
    });
    if let Some(sum) = &c.checksum {
        v["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
    }
    if let Some(l) = &c.license {
        // Cargo's old `MIT/Apache-2.0` is `MIT OR Apache-2.0` in SPDX expression syntax.
        v["licenses"] = json!([{"expression": l.replace('/', " OR ")}]);
    }
    v
}

/// Percent-encode everything but unreserved characters (purl spec: versions like `1:2.3+dfsg`).
fn purl_enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Unix seconds as RFC 3339 UTC.
fn utc(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// RFC 4122 version 5 UUID (SHA-1, URL namespace) of the SHA-256 of `bytes`.
fn uuid5(bytes: &[u8]) -> String {
    const NS_URL: [u8; 16] = [0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8];
    let name = format!("swarmseal-sbom:sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes)));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&NS_URL);
    ctx.update(name.as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&ctx.finish().as_ref()[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h = hex::encode(u);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// An SBOM read back: the component versions [`diff`] compares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// The image version (`metadata.component.version`).
    pub image_version: Option<String>,
    /// The agent's version (component [`AGENT_REF`]).
    pub agent_version: Option<String>,
    /// Debian package name → version.
    pub debs: BTreeMap<String, String>,
    /// Crate name → its versions (a crate can be linked in more than one version).
    pub crates: BTreeMap<String, BTreeSet<String>>,
}

impl Inventory {
    /// Parse a CycloneDX SBOM as [`document`] writes it (`path` names it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Inventory, SbomError> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(rename = "bomFormat")]
            bom_format: String,
            metadata: Option<Meta>,
            #[serde(default)]
            components: Vec<Comp>,
        }
        #[derive(Deserialize)]
        struct Meta {
            component: Option<Comp>,
        }
        #[derive(Deserialize)]
        struct Comp {
            #[serde(rename = "bom-ref")]
            bom_ref: Option<String>,
            name: String,
            version: Option<String>,
            purl: Option<String>,
        }
        let d: Doc = serde_json::from_slice(bytes).map_err(|e| invalid(path, format!("not a CycloneDX JSON SBOM: {e}")))?;
        if d.bom_format != "CycloneDX" {
            return Err(invalid(path, format!("bomFormat is {:?}, not CycloneDX", d.bom_format)));
        }
        let mut inv = Inventory { image_version: d.metadata.and_then(|m| m.component).and_then(|c| c.version), ..Default::default() };
        for c in d.components {
            let version = c.version.unwrap_or_default();
            let purl = c.purl.unwrap_or_default();
            if c.bom_ref.as_deref() == Some(AGENT_REF) {
                inv.agent_version = Some(version);
            } else if purl.starts_with("pkg:deb/") {
                // A foreign architecture's copy is its own entry (`name:arch`), as dpkg names it.
                let arch = purl.split_once('?').and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("arch="))).unwrap_or("");
                let key = if matches!(arch, "" | "all" | "amd64") { c.name } else { format!("{}:{arch}", c.name) };
                inv.debs.insert(key, version);
            } else if purl.starts_with("pkg:cargo/") {
                inv.crates.entry(c.name).or_default().insert(version);
            }
        }
        Ok(inv)
    }

    /// Read and parse an SBOM file.
    pub fn read(path: &Path) -> Result<Inventory, SbomError> {
        use std::io::Read as _;
        let f = std::fs::File::open(path).map_err(io(path))?;
        let mut bytes = Vec::new();
        f.take(MAX_SBOM + 1).read_to_end(&mut bytes).map_err(io(path))?;
        if bytes.len() as u64 > MAX_SBOM {
            return Err(invalid(path, format!("larger than {MAX_SBOM} bytes")));
        }
        Inventory::parse(&bytes, path)
    }
}

/// The SBOM a verified release carries (its directory, or its tar read again), checked against
/// its `SHA256SUMS` line; `None` when the manifest lists none (a release made before SBOMs).
pub async fn from_release(release: &Path, manifest: &crate::Manifest) -> Result<Option<Vec<u8>>, crate::ReleaseError> {
    use tokio::io::AsyncReadExt as _;
    let Some((name, want)) = manifest.files.iter().find(|(n, _)| crate::classify(n).is_some_and(|(p, _)| p == crate::Part::Sbom)) else { return Ok(None) };
    let bytes = if release.is_dir() {
        let p = release.join(name);
        let f = tokio::fs::File::open(&p).await.map_err(crate::io_err(&p))?;
        let mut v = Vec::new();
        f.take(MAX_SBOM + 1).read_to_end(&mut v).await.map_err(crate::io_err(&p))?;
        v
    } else {
        let f = tokio::fs::File::open(release).await.map_err(crate::io_err(release))?;
        let mut tar = crate::tar::Reader::new(tokio::io::BufReader::with_capacity(256 << 10, f), u64::MAX);
        loop {
            let Some(m) = tar.next().await? else { return Err(crate::ReleaseError::Invalid(format!("{name} is listed but not in the archive"))) };
            if m.name == *name {
                break tar.small(&m, MAX_SBOM).await?;
            }
            tar.body::<tokio::fs::File>(&m, None).await?;
        }
    };
    let got: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref().try_into().unwrap_or([0; 32]);
    crate::verify::check_hash(name, want, &got)?;
    Ok(Some(bytes))
}

/// A name whose version changed: old → new.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// A named version (added or removed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Named {
    pub name: String,
    pub version: String,
}

/// One kind of component's changes, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub added: Vec<Named>,
    pub removed: Vec<Named>,
    /// Version changed (`from` → `to`; a downgrade too).
    pub upgraded: Vec<Change>,
    pub unchanged: usize,
}

/// What a release changes against the running image (`swarmseal update verify`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub image: Option<Change>,
    pub agent: Option<Change>,
    pub debian: Changes,
    pub crates: Changes,
}

/// Compare the running image's SBOM (`old`) with a release's (`new`).
pub fn diff(old: &Inventory, new: &Inventory) -> Diff {
    let flat = |m: &BTreeMap<String, BTreeSet<String>>| -> BTreeMap<String, String> {
        m.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect::<Vec<_>>().join(", "))).collect()
    };
    let change = |a: &Option<String>, b: &Option<String>, name: &str| {
        let unknown = || "unknown".to_string();
        (a != b).then(|| Change { name: name.into(), from: a.clone().unwrap_or_else(unknown), to: b.clone().unwrap_or_else(unknown) })
    };
    Diff {
        image: change(&old.image_version, &new.image_version, "swarmseal image"),
        agent: change(&old.agent_version, &new.agent_version, "swarmseal agent"),
        debian: changes(&old.debs, &new.debs),
        crates: changes(&flat(&old.crates), &flat(&new.crates)),
    }
}

fn changes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Changes {
    let mut c = Changes::default();
    for (name, v) in old {
        match new.get(name) {
            None => c.removed.push(Named { name: name.clone(), version: v.clone() }),
            Some(w) if w != v => c.upgraded.push(Change { name: name.clone(), from: v.clone(), to: w.clone() }),
            Some(_) => c.unchanged += 1,
        }
    }
    for (name, v) in new {
        if !old.contains_key(name) {
            c.added.push(Named { name: name.clone(), version: v.clone() });
        }
    }
    c
}

impl std::fmt::Display for Diff {
    /// The operator's text: one line a change, e.g. `  upgraded docker.io 20.10.24 → 26.1.5`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in [&self.image, &self.agent].into_iter().flatten() {
            writeln!(f, "{}: {} → {}", c.name, c.from, c.to)?;
        }
        for (what, c) in [("Debian packages", &self.debian), ("agent crates", &self.crates)] {
            writeln!(
                f,
                "{what}: {} added, {} removed, {} upgraded, {} unchanged",
                c.added.len(),
                c.removed.len(),
                c.upgraded.len(),
                c.unchanged
            )?;
            for a in &c.added {
                writeln!(f, "  added    {} {}", a.name, a.version)?;
            }
            for r in &c.removed {
                writeln!(f, "  removed  {} {}", r.name, r.version)?;
            }
            for u in &c.upgraded {
                writeln!(f, "  upgraded {} {} → {}", u.name, u.from, u.to)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: docker.io\nStatus: install ok installed\nArchitecture: amd64\nSource: docker.io (20.10.24+dfsg1-1)\nVersion: 20.10.24+dfsg1-1+b3\nDescription: Linux container runtime\n multi-line\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: libfoo-dev\nStatus: install ok installed\nArchitecture: amd64\nSource: foo\nVersion: 1:2.0-1\n\nPackage: foo\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:2.0-1\n";
    const DEP5: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: docker\n\nFiles: *\nCopyright: Docker\nLicense: Apache-2.0\n\nFiles: vendor/x/*\nCopyright: X\nLicense: BSD-3-clause\n\nLicense: Apache-2.0\n On Debian systems, see /usr/share/common-licenses/Apache-2.0\n";

    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
        std::fs::write(r.join("var/lib/dpkg/status"), STATUS).unwrap();
        std::fs::create_dir_all(r.join("usr/share/doc/docker.io")).unwrap();
        std::fs::write(r.join("usr/share/doc/docker.io/copyright"), DEP5).unwrap();
        std::fs::create_dir_all(r.join("usr/share/doc/foo")).unwrap();
        std::fs::write(r.join("usr/share/doc/foo/copyright"), "This is foo, GPL.\n").unwrap();
        // An absolute link, as Debian's -dev packages have: must resolve inside the root.
        std::os::unix::fs::symlink("/usr/share/doc/docker.io", r.join("usr/share/doc/libfoo-dev")).unwrap();
        d
    }

    #[test]
    fn held_packages_count_and_links_stay_inside_the_root() {
        let d = fixture();
        let r = d.path();
        let mut status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
        status.push_str("\nPackage: pinned\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 3\n\nPackage: libbar\nStatus: install ok installed\nArchitecture: i386\nVersion: 1\n\nPackage: libbar\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n");
        std::fs::write(r.join("var/lib/dpkg/status"), status).unwrap();
        // A doc dir linked far above the root: resolved inside it (the root's own usr/share/doc/foo).
        std::fs::create_dir_all(r.join("usr/share/doc/only-in-this-root")).unwrap();
        std::fs::write(r.join("usr/share/doc/only-in-this-root/copyright"), DEP5).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../usr/share/doc/only-in-this-root", r.join("usr/share/doc/pinned")).unwrap();
        let debs = read_dpkg(r).unwrap();
        let names: Vec<_> = debs.iter().map(|p| (p.name.as_str(), p.architecture.as_str())).collect();
        assert_eq!(names, [("docker.io", "amd64"), ("foo", "amd64"), ("libbar", "amd64"), ("libbar", "i386"), ("libfoo-dev", "amd64"), ("pinned", "amd64")]);
        assert_eq!(debs[5].licenses, ["Apache-2.0", "BSD-3-clause"], "the link resolved inside the root");
        let s = Subject { image_version: None, agent_version: "0.1.0".into(), epoch: 0 };
        let doc = document(&s, &debs, &[]);
        let v: Value = serde_json::from_slice(&doc).unwrap();
        let refs: Vec<&str> = v["components"].as_array().unwrap().iter().filter_map(|c| c["bom-ref"].as_str()).collect();
        let distinct: std::collections::BTreeSet<_> = refs.iter().collect();
        assert_eq!(distinct.len(), refs.len(), "bom-refs are unique: {refs:?}");
        let inv = Inventory::parse(&doc, Path::new("x")).unwrap();
        assert!(inv.debs.contains_key("libbar") && inv.debs.contains_key("libbar:i386") && inv.debs.contains_key("pinned"), "{:?}", inv.debs);
        assert_eq!(inside_root(Path::new("usr/share/doc/../../../../../etc/passwd")), Path::new("etc/passwd"));
    }

    /// The bytes are canonical: every object's keys sorted (serde_json without `preserve_order`;
    /// if a dependency turned that feature on, the order would follow the code and this fails).
    #[test]
    fn keys_come_out_sorted() {
        let d = fixture();
        let s = Subject { image_version: Some("1".into()), agent_version: "0.1.0".into(), epoch: 0 };
        let doc = document(&s, &read_dpkg(d.path()).unwrap(), &[]);
        fn check(v: &Value) {
            match v {
                Value::Object(m) => {
                    // Parsed in the text's order if `preserve_order` is on, sorted otherwise.
                    let keys: Vec<&String> = m.keys().collect();
                    let mut sorted = keys.clone();
                    sorted.sort();
                    assert_eq!(keys, sorted);
                    m.values().for_each(check);
                }
                Value::Array(a) => a.iter().for_each(check),
                _ => {}
            }
        }
        let v: Value = serde_json::from_slice(&doc).unwrap();
        check(&v);
        let text = String::from_utf8(doc).unwrap();
        assert!(text.find("\"bomFormat\"").unwrap() < text.find("\"components\"").unwrap() && text.find("\"components\"").unwrap() < text.find("\"metadata\"").unwrap());
    }

    #[test]
    fn dpkg_status_and_dep5_licenses() {
        let d = fixture();
        let debs = read_dpkg(d.path()).unwrap();
        let names: Vec<_> = debs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["docker.io", "foo", "libfoo-dev"], "only installed packages, sorted");
        assert_eq!(debs[0].source, "docker.io");
        assert_eq!(debs[0].version, "20.10.24+dfsg1-1+b3");
        assert_eq!(debs[0].licenses, ["Apache-2.0", "BSD-3-clause"]);
        assert!(debs[1].licenses.is_empty(), "not DEP-5: no license claimed");
        assert_eq!(debs[2].source, "foo");
        assert_eq!(debs[2].licenses, ["Apache-2.0", "BSD-3-clause"], "through the absolute doc-dir link, inside the root");
    }

    #[test]
    fn same_inputs_same_bytes_and_a_content_serial() {
        let d = fixture();
        let debs = read_dpkg(d.path()).unwrap();
        let s = Subject { image_version: Some("1.2.3".into()), agent_version: "0.1.0".into(), epoch: 1764374400 };
        let a = document(&s, &debs, &[]);
        let b = document(&s, &read_dpkg(d.path()).unwrap(), &[]);
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["metadata"]["timestamp"], "2025-11-29T00:00:00Z");
        let serial = v["serialNumber"].as_str().unwrap();
        assert!(serial.starts_with("urn:uuid:") && serial.as_bytes()[23] == b'5', "{serial}");
        let other = document(&Subject { image_version: Some("1.2.4".into()), ..s }, &debs, &[]);
        let w: Value = serde_json::from_slice(&other).unwrap();
        assert_ne!(w["serialNumber"], v["serialNumber"], "another content, another serial");
        assert_eq!(v["components"][0]["purl"], "pkg:deb/debian/docker.io@20.10.24%2Bdfsg1-1%2Bb3?arch=amd64");
        assert_eq!(v["components"][1]["licenses"][0]["expression"], "NOASSERTION");
        assert_eq!(v["components"][2]["purl"], "pkg:deb/debian/libfoo-dev@1%3A2.0-1?arch=amd64&upstream=foo");
    }

    #[test]
    fn diff_names_added_removed_upgraded() {
        let inv = |debs: &[(&str, &str)], agent: &str| Inventory {
            image_version: Some(agent.into()),
            agent_version: Some(agent.into()),
            debs: debs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            crates: BTreeMap::new(),
        };
        let d = diff(&inv(&[("a", "1"), ("b", "1"), ("c", "1")], "0.1.0"), &inv(&[("a", "1"), ("b", "2"), ("d", "1")], "0.2.0"));
        assert_eq!(d.debian.added, [Named { name: "d".into(), version: "1".into() }]);
        assert_eq!(d.debian.removed, [Named { name: "c".into(), version: "1".into() }]);
        assert_eq!(d.debian.upgraded, [Change { name: "b".into(), from: "1".into(), to: "2".into() }]);
        assert_eq!(d.debian.unchanged, 1);
        assert_eq!(d.agent.as_ref().unwrap().to, "0.2.0");
        let text = d.to_string();
        assert!(text.contains("  upgraded b 1 → 2") && text.contains("  added    d 1") && text.contains("  removed  c 1"), "{text}");
    }
}
