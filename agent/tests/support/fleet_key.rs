//! The fleet's PCR-signing key for the tests of signed policies (`authorize.rs`,
//! `firmware.rs`): made with openssl as `ukify genkey` would, signing PCR 11 the way
//! systemd-measure does, and systemd's signature file.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use swarmseal::pcrsig::PcrPublicKey;
use swarmseal::tpm::pcr_policy_digest;

/// Run `args` (a tool, then its arguments) in `dir`; its stdout. A tool that is missing or fails is a test failure.
pub fn run_in(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = super::cmd(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{} must be installed: {e}", args[0]));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A PCR-signing key pair made with openssl, as `ukify genkey` would (RSA 2048 by default).
pub struct FleetKey {
    dir: tempfile::TempDir,
}

impl FleetKey {
    pub fn rsa() -> FleetKey {
        FleetKey::generate(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    }

    pub fn ecc_p256() -> FleetKey {
        FleetKey::generate(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    }

    pub fn generate(opts: &[&str]) -> FleetKey {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["openssl", "genpkey"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["-out", "key.pem"]);
        run_in(dir.path(), &args);
        run_in(dir.path(), &["openssl", "pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        FleetKey { dir }
    }

    pub fn public_pem(&self) -> PathBuf {
        self.dir.path().join("pub.pem")
    }

    pub fn public(&self) -> PcrPublicKey {
        PcrPublicKey::load(&self.public_pem()).unwrap()
    }

    /// systemd's `pkfp`: sha256 of `i2d_PublicKey` — the subjectPublicKey bits of the
    /// SubjectPublicKeyInfo (PKCS#1 RSAPublicKey for RSA, the EC point for ECC).
    pub fn pkfp(&self) -> String {
        let der = run_in(self.dir.path(), &["openssl", "pkey", "-in", "key.pem", "-pubout", "-outform", "DER"]);
        // The last element of the SPKI SEQUENCE is the BIT STRING; ask openssl where it is.
        let parsed = run_in(self.dir.path(), &["sh", "-c", "openssl pkey -in key.pem -pubout -outform DER | openssl asn1parse -inform DER"]);
        let line = String::from_utf8_lossy(&parsed).lines().rev().find(|l| l.contains("BIT STRING")).expect("a BIT STRING").to_string();
        // e.g. "   19:d=1  hl=4 l= 271 prim: BIT STRING"
        let num = |t: &str| -> usize { t.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap() };
        let off = num(line.split(':').next().unwrap());
        let hl = num(line.split("hl=").nth(1).unwrap());
        let l = num(line.split(" l=").nth(1).unwrap());
        // Content = unused-bits byte + the key bits.
        hex::encode(Sha256::digest(&der[off + hl + 1..off + hl + l]))
    }

    /// Sign the TPM2_PolicyPCR digest of PCR 11 = `pcr11` the way systemd-measure does:
    /// `openssl dgst -sha256 -sign` over the binary digest. Returns one JSON entry.
    pub fn sign_pcr11(&self, pcr11: &[u8]) -> serde_json::Value {
        let pol = pcr_policy_digest(&[(11u8, pcr11.to_vec())].into_iter().collect());
        let d = self.dir.path();
        std::fs::write(d.join("pol.bin"), &pol).unwrap();
        run_in(d, &["openssl", "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.bin", "pol.bin"]);
        let sig = std::fs::read(d.join("sig.bin")).unwrap();
        serde_json::json!({
            "pcrs": [11],
            "pkfp": self.pkfp(),
            "pol": hex::encode(&pol),
            "sig": base64::engine::general_purpose::STANDARD.encode(sig),
        })
    }
}

/// systemd's signature JSON with these sha256 entries (one per boot phase / image).
pub fn signature_file(dir: &Path, name: &str, entries: Vec<serde_json::Value>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(&serde_json::json!({ "sha256": entries })).unwrap()).unwrap();
    p
}
