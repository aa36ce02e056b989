//! Test support (feature `testing`, and this crate's own tests): a small release signed with a
//! fresh key by openssl and packed by GNU tar, as `scripts/make-keys` and `build-image` did.

use std::path::Path;

use crate::{Part, ReleaseKey};

/// The fixture's version and partition UUIDs.
pub const V: &str = "1.2.3";
pub const U1: &str = "0b8e2b1e-3c3a-4a6e-9c71-3a3f2b7c9d10";
pub const U2: &str = "7f2a1c55-1d2e-4f3a-8b9c-0a1b2c3d4e5f";

/// The three file names of version `v`: UKI, root, verity.
pub fn names(v: &str) -> [String; 3] {
    [Part::Uki.file_name(v, ""), Part::Root.file_name(v, U1), Part::Verity.file_name(v, U2)]
}

/// Run `cmd` with `sh -e` in `dir`; panics when it fails.
pub fn sh(cmd: &str, dir: &Path) {
    let st = std::process::Command::new("sh").arg("-ec").arg(cmd).current_dir(dir).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// `dir/rel/` (the release of [`V`]: UKI 1000 bytes of 1, root 70,000 bytes of 2, verity 512
/// bytes of 3, SHA256SUMS, SHA256SUMS.sig), `dir/rel.tar` (root, UKI, verity after the
/// manifest), `dir/k.key` and `dir/k.pem`, and `key` loaded from `k.pem`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: ReleaseKey,
}

/// A fresh RSA 2048 key pair `dir/<stem>.key` and `dir/<stem>.pem` (as `scripts/make-keys`
/// makes the PCR-signing key); the public key loaded.
pub fn rsa_key(dir: &Path, stem: &str) -> ReleaseKey {
    sh(&format!("openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {stem}.key && openssl pkey -in {stem}.key -pubout -out {stem}.pem"), dir);
    ReleaseKey::load(&dir.join(format!("{stem}.pem"))).unwrap()
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rsa_key(d, "k");
    std::fs::create_dir(d.join("rel")).unwrap();
    let [efi, root, verity] = names(V);
    for (n, body) in [(&efi, vec![1u8; 1000]), (&root, vec![2u8; 70_000]), (&verity, vec![3u8; 512])] {
        std::fs::write(d.join("rel").join(n), body).unwrap();
    }
    sh(&format!("cd rel && sha256sum {efi} {root} {verity} > SHA256SUMS && openssl dgst -sha256 -sign ../k.key -out SHA256SUMS.sig SHA256SUMS"), d);
    sh(&format!("cd rel && tar --format=ustar -cf ../rel.tar SHA256SUMS SHA256SUMS.sig {root} {efi} {verity}"), d);
    Fixture { dir, key }
}

/// A current-thread runtime with time and I/O.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}
