//! Sealed unlock keys on disk: two slots, `current` and `previous`, under
//! `<state_dir>/keys/`, plus the phase-lock record `<state_dir>/phase.json`. While a firmware
//! window is armed (the agent's `crate::firmware`), a third slot `window` holds a copy of the
//! key sealed without PCR 7 ([`Keystore::store_window`], [`Keystore::drop_window`]).
//!
//! Files hold TPM blobs and metadata only, never the key. They are JSON,
//! versioned (`format`, `version`), written atomically (temp file, fsync,
//! rename, fsync dir) with mode 0600. A file that cannot be read as a slot
//! (corrupt, truncated, another format or version) is an error that names the
//! file; it is never deleted or overwritten silently — a slot file that is
//! replaced while unreadable is kept as `<name>.bad-<unix time>-<n>` (`n` counts
//! up: no copy overwrites another). Temp files (`.<name>.tmp-<pid>`) a killed
//! process left are removed by the next command ([`Keystore::clean_temp`]).
//!
//! Also here: the write-ahead marker `keys/change-pending.json` ([`PendingChange`]),
//! written before a command asks the engine to change its key and removed once the
//! new key is sealed; and the room reserved for a seal before the engine changes
//! ([`Keystore::reserve`]).
//!
//! Slot file (format `swarmseal.sealed-key`, version 1):
//! ```json
//! { "format": "swarmseal.sealed-key", "version": 1, "slot": "current",
//!   "created": "2026-11-29T18:00:00Z",
//!   "key_fingerprint": "<hex sha256(salt, key)>", "fingerprint_salt": "<hex>",
//!   "srk_name": "<hex>",
//!   "policy": { "kind": "pcr", "bank": "sha256", "pcrs": {"7": "<hex>", …}, "digest": "<hex>" },
//!   "public": "<base64 TPM2B_PUBLIC>", "private": "<base64 TPM2B_PRIVATE>" }
//! ```
//! `policy.kind` tags the policy. A signed PCR policy (TPM2_PolicyAuthorize with a fleet
//! PCR-signing key, then TPM2_PolicyPCR over the literal PCRs) is stored as
//! ```json
//!   "policy": { "kind": "authorize", "bank": "sha256",
//!               "public_key": "<base64 DER SubjectPublicKeyInfo>", "public_key_fingerprint": "<hex sha256 of it>",
//!               "signed_pcrs": [11], "pcrs": {"7": "<hex>", "15": "<hex>"}, "digest": "<hex>" }
//! ```
//! (`pcrs` holds the literal PCRs only). Unsealing uses this stored key, not whatever key
//! file the running image ships: the object is bound to this key's Name.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use swarmseal_common::secret::UnlockKey;

use crate::pcrsig::PcrPublicKey;
use crate::tpm::{PcrValues, Policy, SealedObject};

pub const FORMAT: &str = "swarmseal.sealed-key";
pub const VERSION: u32 = 1;

/// Keystore errors. `Display` is the operator sentence.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("no sealed unlock key in {dir} (run `swarmseal init` or `swarmseal seal`)")]
    NoSealedKey { dir: PathBuf },
    #[error("the sealed key file {path} is unreadable ({message}); it was left untouched. Unlock with the escrowed key (`age -d -i KEY <state_dir>/escrow/unlock-key.age | swarmseal unlock --manual`) or the operator's copy: that seals it again")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Current,
    Previous,
    /// The firmware window's copy (PCRs 2, 4, 12, 15 literal + PCR 11 signed, not PCR 7): tried
    /// only after a firmware change the window accepted in this boot.
    Window,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::Previous => "previous",
            Slot::Window => "window",
        }
    }
}

/// The stored policy (tagged by `kind`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoredPolicy {
    /// TPM2_PolicyPCR over `pcrs` (index → hex digest) in `bank`.
    Pcr { bank: String, pcrs: BTreeMap<String, String>, digest: String },
    /// TPM2_PolicyAuthorize with `public_key` (base64 DER SubjectPublicKeyInfo, SHA-256
    /// `public_key_fingerprint` in hex) over signatures of `signed_pcrs`, then TPM2_PolicyPCR
    /// over the literal `pcrs` (index → hex digest) in `bank`.
    Authorize {
        bank: String,
        public_key: String,
        public_key_fingerprint: String,
        signed_pcrs: Vec<u8>,
        pcrs: BTreeMap<String, String>,
        digest: String,
    },
}

impl StoredPolicy {
    /// The literal PCRs (index → hex).
    pub fn literal_pcrs(&self) -> &BTreeMap<String, String> {
        match self {
            StoredPolicy::Pcr { pcrs, .. } | StoredPolicy::Authorize { pcrs, .. } => pcrs,
        }
    }

    /// The signed PCRs (none for `pcr`).
    pub fn signed_pcrs(&self) -> &[u8] {
        match self {
            StoredPolicy::Pcr { .. } => &[],
            StoredPolicy::Authorize { signed_pcrs, .. } => signed_pcrs,
        }
    }

    /// `pcr` or `authorize`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoredPolicy::Pcr { .. } => "pcr",
            StoredPolicy::Authorize { .. } => "authorize",
        }
    }
}

/// One slot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotFile {
    pub format: String,
    pub version: u32,
    pub slot: Slot,
    pub created: String,
    pub key_fingerprint: String,
    pub fingerprint_salt: String,
    pub srk_name: String,
    pub policy: StoredPolicy,
    pub public: String,
    pub private: String,
}

impl SlotFile {
    /// Build a slot file from a sealing result.
    pub fn new(slot: Slot, obj: &SealedObject, policy: &Policy, fingerprint: String, salt: &[u8]) -> SlotFile {
        let hex_values = |v: &PcrValues| v.iter().map(|(k, v)| (k.to_string(), hex::encode(v))).collect();
        let policy = match policy {
            Policy::Pcr { values } => StoredPolicy::Pcr {
                bank: "sha256".into(),
                pcrs: hex_values(values),
                digest: hex::encode(&obj.policy_digest),
            },
            Policy::Authorize { key, signed_pcrs, values } => StoredPolicy::Authorize {
                bank: "sha256".into(),
                public_key: B64.encode(key.der()),
                public_key_fingerprint: hex::encode(key.fingerprint()),
                signed_pcrs: signed_pcrs.clone(),
                pcrs: hex_values(values),
                digest: hex::encode(&obj.policy_digest),
            },
        };
        SlotFile {
            format: FORMAT.into(),
            version: VERSION,
            slot,
            created: now_rfc3339(),
            key_fingerprint: fingerprint,
            fingerprint_salt: hex::encode(salt),
            srk_name: hex::encode(&obj.srk_name),
            policy,
            public: B64.encode(&obj.public),
            private: B64.encode(&obj.private),
        }
    }

    /// The TPM objects and the policy, decoded. Errors as [`KeystoreError::Corrupt`].
    pub fn decode(&self, path: &Path) -> Result<(SealedObject, Policy), KeystoreError> {
        let bad = |m: String| KeystoreError::Corrupt { path: path.to_path_buf(), message: m };
        let (bank, pcrs, digest) = match &self.policy {
            StoredPolicy::Pcr { bank, pcrs, digest } | StoredPolicy::Authorize { bank, pcrs, digest, .. } => (bank, pcrs, digest),
        };
        if bank != "sha256" {
            return Err(bad(format!("PCR bank {bank} is not supported")));
        }
        let mut values = PcrValues::new();
        for (k, v) in pcrs {
            let idx: u8 = k.parse().map_err(|_| bad(format!("PCR index {k:?}")))?;
            let val = hex::decode(v).map_err(|_| bad(format!("PCR {k} value is not hex")))?;
            if val.len() != 32 {
                return Err(bad(format!("PCR {k} value is not 32 bytes")));
            }
            values.insert(idx, val);
        }
        let obj = SealedObject {
            public: B64.decode(&self.public).map_err(|_| bad("`public` is not base64".into()))?,
            private: B64.decode(&self.private).map_err(|_| bad("`private` is not base64".into()))?,
            srk_name: hex::decode(&self.srk_name).map_err(|_| bad("`srk_name` is not hex".into()))?,
            policy_digest: hex::decode(digest).map_err(|_| bad("policy digest is not hex".into()))?,
        };
        if obj.public.is_empty() || obj.private.is_empty() {
            return Err(bad("empty TPM blob".into()));
        }
        let policy = match &self.policy {
            StoredPolicy::Pcr { .. } => Policy::Pcr { values },
            StoredPolicy::Authorize { public_key, public_key_fingerprint, signed_pcrs, .. } => {
                let der = B64.decode(public_key).map_err(|_| bad("`public_key` is not base64".into()))?;
                let key = PcrPublicKey::from_der(&der).map_err(|e| bad(format!("its PCR signing key is unusable: {e}")))?;
                if hex::encode(key.fingerprint()) != *public_key_fingerprint {
                    return Err(bad("its PCR signing key does not match its fingerprint (the file was edited or damaged)".into()));
                }
                let mut signed_pcrs = signed_pcrs.clone();
                signed_pcrs.sort_unstable();
                signed_pcrs.dedup();
                if signed_pcrs.is_empty() || signed_pcrs.iter().any(|p| *p > crate::tpm::MAX_PCR || values.contains_key(p)) {
                    return Err(bad(format!("signed PCRs {signed_pcrs:?} are empty, out of range or also literal")));
                }
                Policy::Authorize { key, signed_pcrs, values }
            }
        };
        // The recorded PCR values (and key) must be the ones the policy digest was computed
        // from; if not, the file was edited (the TPM would refuse anyway, but "PCRs changed"
        // would send the operator the wrong way).
        if policy.digest() != obj.policy_digest {
            return Err(bad("its PCR values do not match its policy digest (the file was edited or damaged)".into()));
        }
        Ok((obj, policy))
    }

    pub fn salt(&self) -> Vec<u8> {
        hex::decode(&self.fingerprint_salt).unwrap_or_default()
    }
}

/// The window copy in use (`keys/window-claim.json`, no secret): the boot whose accepted
/// firmware decision it serves (that decision's boot ID), the PCR 7 (sha256, hex) it was
/// accepted at, the copy it claims (that copy's `key_fingerprint`: a claim of another copy
/// grants nothing, [`Keystore::load_window_claim`]), the boot that wrote it (`claimed_in`), and
/// whether the copy unsealed and unlocked the engine in that boot (`unlocked`). Fields after
/// `pcr7` default (older claims: no copy named, so they never count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowClaim {
    pub boot_id: String,
    pub pcr7: String,
    #[serde(default)]
    pub copy: String,
    #[serde(default)]
    pub claimed_in: Option<String>,
    #[serde(default)]
    pub unlocked: bool,
}

/// Phase-lock record: PCR values of this boot before and after the agent's extend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRecord {
    pub format: String,
    pub version: u32,
    pub phase_pcr: u8,
    /// index → hex, before the extend (what the key is sealed to).
    pub before: BTreeMap<String, String>,
    /// index → hex, after the extend (how we recognise this boot later).
    pub after: BTreeMap<String, String>,
}

pub fn pcrs_to_hex(v: &PcrValues) -> BTreeMap<String, String> {
    v.iter().map(|(k, x)| (k.to_string(), hex::encode(x))).collect()
}

pub fn pcrs_from_hex(m: &BTreeMap<String, String>) -> Option<PcrValues> {
    m.iter().map(|(k, v)| Some((k.parse().ok()?, hex::decode(v).ok()?))).collect()
}

/// The state dir's sealed-key store.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
    /// Where a copy of the phase record lives for this boot (`runtime_dir`, tmpfs `/run/swarmseal`).
    runtime: Option<PathBuf>,
}

/// Room a seal reserves before the engine changes: each slot file, and the escrow copy (bytes).
pub const SLOT_RESERVE: u64 = 16 * 1024;
pub const ESCROW_RESERVE: u64 = 4 * 1024;

/// Write-ahead marker (`keys/change-pending.json`, no secret): a command is about to change the
/// engine's unlock key (`op`: `init`, `autolock`, `rotate`). Until it is removed, the next
/// command that reaches the engine seals the engine's key first (the agent's `boot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingChange {
    pub format: String,
    pub version: u32,
    pub op: String,
    pub pid: u32,
    /// Unix time (s) when the marker was written.
    pub started: u64,
    /// Salted fingerprint of the engine's key before the change (none: no key yet).
    pub old_key_fingerprint: Option<String>,
    pub fingerprint_salt: String,
}

impl Keystore {
    pub fn new(state_dir: &Path) -> Keystore {
        Keystore { dir: state_dir.to_path_buf(), runtime: None }
    }

    /// Also keep the phase record in `runtime_dir` (tmpfs): a full state dir cannot lose it.
    pub fn with_runtime_dir(mut self, runtime_dir: &Path) -> Keystore {
        self.runtime = Some(runtime_dir.to_path_buf());
        self
    }

    fn pending_path(&self) -> PathBuf {
        self.keys_dir().join("change-pending.json")
    }

    /// Write the marker (atomic, mode 0600). Errors: `Io` (the command must not go on).
    pub fn store_pending(&self, p: &PendingChange) -> Result<(), KeystoreError> {
        self.make_keys_dir()?;
        self.write_json(&self.pending_path(), p)
    }

    /// The marker, if any. An unreadable marker still counts as one (the next command checks).
    pub fn load_pending(&self) -> Option<PendingChange> {
        let b = std::fs::read(self.pending_path()).ok()?;
        Some(serde_json::from_slice(&b).unwrap_or(PendingChange {
            format: "swarmseal.change-pending".into(),
            version: 1,
            op: "unknown".into(),
            pid: 0,
            started: 0,
            old_key_fingerprint: None,
            fingerprint_salt: String::new(),
        }))
    }

    pub fn clear_pending(&self) -> Result<(), KeystoreError> {
        if remove_if_present(&self.pending_path())? {
            fsync_dir(&self.keys_dir())?;
        }
        Ok(())
    }

    fn make_keys_dir(&self) -> Result<(), KeystoreError> {
        std::fs::create_dir_all(self.keys_dir()).map_err(|e| KeystoreError::Io { path: self.keys_dir(), source: e })?;
        set_mode(&self.keys_dir(), 0o700);
        Ok(())
    }

    /// Reserve the room a seal writes ([`SLOT_RESERVE`] for each slot, [`ESCROW_RESERVE`] for
    /// `escrow` if given): the temp files [`write_atomic`] then fills in place, so a disk that
    /// fills up after this call cannot stop the seal. Removed when the guard drops.
    ///
    /// Errors: `Io` naming the file when the state dir is not writable or has no room.
    pub fn reserve(&self, escrow: Option<&Path>) -> Result<Reservation, KeystoreError> {
        self.make_keys_dir()?;
        let mut files = vec![(self.slot_path(Slot::Current), SLOT_RESERVE), (self.slot_path(Slot::Previous), SLOT_RESERVE)];
        if let Some(e) = escrow {
            let dir = e.parent().expect("has parent");
            std::fs::create_dir_all(dir).map_err(|err| KeystoreError::Io { path: dir.to_path_buf(), source: err })?;
            set_mode(dir, 0o700);
            files.push((e.to_path_buf(), ESCROW_RESERVE));
        }
        let mut r = Reservation(Vec::new());
        for (target, size) in files {
            let tmp = swarmseal_common::fs::temp_path(&target);
            r.0.push(tmp.clone());
            let io = |e: std::io::Error| KeystoreError::Io { path: tmp.clone(), source: std::io::Error::new(e.kind(), format!("cannot reserve {size} bytes for {}: {e}", target.display())) };
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&tmp).map_err(io)?;
            f.write_all(&vec![0u8; size as usize]).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        Ok(r)
    }

    /// Remove temp files (`.<name>.tmp-<pid>`) that a process no longer running left in the
    /// state dir, `keys/` and `escrow/` (a live writer's are left alone). Returns what was removed.
    pub fn clean_temp(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for d in [self.dir.clone(), self.keys_dir(), self.dir.join("escrow")] {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some((_, pid)) = name.rsplit_once(".tmp-") else { continue };
                let gone = pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
                if name.starts_with('.') && gone && std::fs::remove_file(e.path()).is_ok() {
                    removed.push(e.path());
                }
            }
        }
        removed
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        self.keys_dir().join(format!("{}.json", slot.name()))
    }

    fn phase_paths(&self) -> Vec<PathBuf> {
        self.runtime.iter().map(|r| r.join("phase.json")).chain([self.dir.join("phase.json")]).collect()
    }

    /// Read a slot; `Ok(None)` when the file does not exist.
    pub fn load(&self, slot: Slot) -> Result<Option<SlotFile>, KeystoreError> {
        let path = self.slot_path(slot);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeystoreError::Corrupt { path, message: e.to_string() }),
        };
        let f: SlotFile = serde_json::from_slice(&bytes).map_err(|e| KeystoreError::Corrupt { path: path.clone(), message: format!("not a sealed-key file: {e}") })?;
        if f.format != FORMAT || f.version != VERSION {
            return Err(KeystoreError::Corrupt { path, message: format!("format {:?} version {} is not {FORMAT} version {VERSION}", f.format, f.version) });
        }
        Ok(Some(f))
    }

    /// Store a new `current` slot. The old `current`, if readable and holding
    /// another key, becomes `previous` first (so a crash leaves either the old
    /// pair or the new pair, never no key). A same-key reseal replaces
    /// `current` only. An unreadable file about to be replaced (`current`, or
    /// `previous` when the old `current` moves there) is kept as `<name>.bad-<time>-<n>`.
    pub fn store_current(&self, new: &SlotFile, key: &UnlockKey) -> Result<(), KeystoreError> {
        self.make_keys_dir()?;
        match self.load(Slot::Current) {
            Ok(Some(old)) => {
                let same = key.fingerprint(&old.salt()) == old.key_fingerprint;
                let staged = matches!(self.load(Slot::Previous), Ok(Some(p)) if p.key_fingerprint == old.key_fingerprint && p.public == old.public);
                if !same && !staged {
                    if self.load(Slot::Previous).is_err() {
                        keep_bad(&self.slot_path(Slot::Previous))?;
                    }
                    let mut prev = old.clone();
                    prev.slot = Slot::Previous;
                    self.write_json(&self.slot_path(Slot::Previous), &prev)?;
                }
            }
            Ok(None) => {}
            Err(_) => {
                keep_bad(&self.slot_path(Slot::Current))?;
            }
        }
        let mut cur = new.clone();
        cur.slot = Slot::Current;
        self.write_json(&self.slot_path(Slot::Current), &cur)
    }

    /// Copy `current` to `previous` ahead of a key change ([`Keystore::store_current`] then
    /// writes `current` only): fewer writes between the engine's change and the new key in
    /// place. A readable `previous` is replaced, an unreadable one kept aside; no `current`: nothing.
    pub fn stage_previous(&self) -> Result<(), KeystoreError> {
        let Ok(Some(cur)) = self.load(Slot::Current) else { return Ok(()) };
        if self.load(Slot::Previous).is_err() {
            keep_bad(&self.slot_path(Slot::Previous))?;
        }
        let mut prev = cur;
        prev.slot = Slot::Previous;
        self.write_json(&self.slot_path(Slot::Previous), &prev)
    }

    /// Remove the `previous` slot (after every manager re-encrypted under the new key).
    pub fn drop_previous(&self) -> Result<(), KeystoreError> {
        if remove_if_present(&self.slot_path(Slot::Previous))? {
            fsync_dir(&self.keys_dir())?;
        }
        Ok(())
    }

    /// Write the firmware window's copy (`keys/window.json`, atomic, 0600), replacing any
    /// earlier one (an unreadable one is kept aside) and removing any claim (it was of an
    /// earlier copy). `current` and `previous` are not touched.
    pub fn store_window(&self, new: &SlotFile) -> Result<(), KeystoreError> {
        self.make_keys_dir()?;
        self.remove_window_claim()?;
        if self.load(Slot::Window).is_err() {
            keep_bad(&self.slot_path(Slot::Window))?;
        }
        let mut w = new.clone();
        w.slot = Slot::Window;
        self.write_json(&self.slot_path(Slot::Window), &w)
    }

    /// Remove the firmware window's copy (disarmed, expired, refused, or used) and its claim
    /// ([`Keystore::store_window_claim`]). Returns whether there was a copy.
    pub fn drop_window(&self) -> Result<bool, KeystoreError> {
        let had = remove_if_present(&self.slot_path(Slot::Window))?;
        let claimed = self.remove_window_claim()?;
        if had || claimed {
            fsync_dir(&self.keys_dir())?;
        }
        Ok(had)
    }

    /// Remove the window copy's claim; whether there was one.
    fn remove_window_claim(&self) -> Result<bool, KeystoreError> {
        remove_if_present(&self.claim_path())
    }

    fn claim_path(&self) -> PathBuf {
        self.keys_dir().join("window-claim.json")
    }

    /// Record (atomic, 0600) that the window copy is being used for the accepted decision of
    /// boot `claim.boot_id` at PCR 7 = `claim.pcr7`, before it is unsealed: a boot cut short
    /// between the unlock and the reseal of `current` can then finish at the same PCR 7.
    pub fn store_window_claim(&self, claim: &WindowClaim) -> Result<(), KeystoreError> {
        self.make_keys_dir()?;
        self.write_json(&self.claim_path(), claim)
    }

    /// The window copy's claim, if any and if it names the copy on disk (its `copy` is that
    /// copy's `key_fingerprint`). An unreadable claim, one of another copy, or one without a
    /// copy counts as none: it grants nothing.
    pub fn load_window_claim(&self) -> Option<WindowClaim> {
        let claim: WindowClaim = serde_json::from_slice(&std::fs::read(self.claim_path()).ok()?).ok()?;
        let copy = self.load(Slot::Window).ok()??;
        (claim.copy == copy.key_fingerprint).then_some(claim)
    }

    /// Every readable phase record: the runtime dir's copy first, then the state dir's.
    pub fn load_phases(&self) -> Vec<PhaseRecord> {
        self.phase_paths().iter().filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok()).collect()
    }

    /// Write the phase record to the runtime dir and the state dir. `Ok` when at least one
    /// copy was written; the other's failure is returned as the second value (to log).
    pub fn store_phase(&self, r: &PhaseRecord) -> Result<Option<KeystoreError>, KeystoreError> {
        let mut errors = Vec::new();
        let paths = self.phase_paths();
        for p in &paths {
            let dir = p.parent().expect("has parent");
            let written = std::fs::create_dir_all(dir).map_err(|e| KeystoreError::Io { path: dir.to_path_buf(), source: e }).and_then(|_| self.write_json(p, r));
            if let Err(e) = written {
                errors.push(e);
            }
        }
        if errors.len() == paths.len() {
            return Err(errors.remove(0));
        }
        Ok(errors.pop())
    }

    fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), KeystoreError> {
        let mut bytes = serde_json::to_vec_pretty(v).expect("serializable");
        bytes.push(b'\n');
        write_atomic(path, &bytes, 0o600)
    }
}

/// [`swarmseal_common::fs::write_atomic`] with the keystore's error: temp file `.<name>.tmp-<pid>` in the same dir (mode
/// `mode`), fsync, rename over `path`, fsync the directory. A temp file reserved beforehand
/// ([`Keystore::reserve`]) is overwritten in place, so it needs no new blocks.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeystoreError> {
    swarmseal_common::fs::write_atomic(path, bytes, mode).map_err(|e| KeystoreError::Io { path: path.to_path_buf(), source: e })
}


/// Room reserved by [`Keystore::reserve`]; whatever was not used is removed on drop.
pub struct Reservation(Vec<PathBuf>);

impl Drop for Reservation {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Move `path` (unreadable, about to be replaced) aside as `<name>.bad-<unix time>-<n>`, the
/// first `n` free (a hard link cannot replace an existing name), and warn. No file: nothing.
fn keep_bad(path: &Path) -> Result<Option<PathBuf>, KeystoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("slot");
    let now = unix_now();
    for n in 0..10_000 {
        let bad = path.with_file_name(format!("{name}.bad-{now}-{n}"));
        match std::fs::hard_link(path, &bad) {
            Ok(()) => {
                std::fs::remove_file(path).map_err(|e| KeystoreError::Io { path: path.to_path_buf(), source: e })?;
                tracing::warn!(event = "slot_kept_aside", file = %path.display(), kept_as = %bad.display(), "unreadable sealed-key file kept aside before writing a new one");
                return Ok(Some(bad));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(KeystoreError::Io { path: bad, source: e }),
        }
    }
    Err(KeystoreError::Io { path: path.to_path_buf(), source: std::io::Error::other("too many .bad copies") })
}

/// Remove `path`; whether it was there (a missing file is no error). Errors: `Io`.
fn remove_if_present(path: &Path) -> Result<bool, KeystoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(KeystoreError::Io { path: path.to_path_buf(), source: e }),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), KeystoreError> {
    swarmseal_common::fs::fsync_dir(dir).map_err(|e| KeystoreError::Io { path: dir.to_path_buf(), source: e })
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Now as RFC 3339 UTC (`2026-11-29T18:00:00Z`).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> UnlockKey {
        UnlockKey::new(format!("SWMKEY-1-{s}aaaaaaaaaaaaaaaaaaaa")).unwrap()
    }

    fn slot(k: &UnlockKey) -> SlotFile {
        let mut values = PcrValues::new();
        values.insert(7, vec![0; 32]);
        let obj = SealedObject { public: vec![1, 2], private: vec![3], srk_name: vec![4], policy_digest: crate::tpm::pcr_policy_digest(&values) };
        SlotFile::new(Slot::Current, &obj, &Policy::Pcr { values }, k.fingerprint(b"salt"), b"salt")
    }

    #[test]
    fn rotation_moves_current_to_previous_and_reseal_does_not() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path());
        let (a, b) = (key("a"), key("b"));
        ks.store_current(&slot(&a), &a).unwrap();
        assert!(ks.load(Slot::Previous).unwrap().is_none());
        ks.store_current(&slot(&a), &a).unwrap();
        assert!(ks.load(Slot::Previous).unwrap().is_none(), "same-key reseal must not fill previous");
        ks.store_current(&slot(&b), &b).unwrap();
        let prev = ks.load(Slot::Previous).unwrap().unwrap();
        assert_eq!(prev.key_fingerprint, a.fingerprint(b"salt"));
        assert_eq!(prev.slot, Slot::Previous);
        let cur = ks.load(Slot::Current).unwrap().unwrap();
        assert_eq!(cur.key_fingerprint, b.fingerprint(b"salt"));
        let text = std::fs::read_to_string(ks.slot_path(Slot::Current)).unwrap();
        assert!(!text.contains("SWMKEY"), "the key must never be on disk");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(ks.slot_path(Slot::Current)).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn corrupt_slot_is_an_error_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path());
        std::fs::create_dir_all(ks.keys_dir()).unwrap();
        std::fs::write(ks.slot_path(Slot::Current), b"{\"format\": \"swarmseal.sealed-key\", \"vers").unwrap();
        let e = ks.load(Slot::Current).unwrap_err();
        assert!(matches!(e, KeystoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("current.json"));
        let a = key("a");
        ks.store_current(&slot(&a), &a).unwrap();
        let kept: Vec<_> = std::fs::read_dir(ks.keys_dir()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".bad-")).collect();
        assert_eq!(kept.len(), 1, "the unreadable file is kept aside, not lost");
    }

    #[test]
    fn edited_pcr_values_are_a_corrupt_file() {
        let a = key("a");
        let mut s = slot(&a);
        let p = Path::new("current.json");
        assert!(s.decode(p).is_ok());
        let StoredPolicy::Pcr { pcrs, .. } = &mut s.policy else { unreachable!() };
        pcrs.insert("7".into(), "11".repeat(32));
        assert!(s.decode(p).unwrap_err().to_string().contains("edited"));
    }

    // openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkey -pubout
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIpL83hNgiQbsr2frv1Zw6ZR4yEDt
nPR3ol5o7I+bfPJwTaTkJOqvmSfHlCBRVlylSUGOhoc6AVaN3Y5bFycnHQ==
-----END PUBLIC KEY-----
";

    fn authorize_slot(k: &UnlockKey) -> SlotFile {
        let key = PcrPublicKey::from_pem(P256_PEM.as_bytes()).unwrap();
        let values: PcrValues = [(7, vec![7; 32]), (15, vec![15; 32])].into_iter().collect();
        let policy = Policy::Authorize { key, signed_pcrs: vec![11], values };
        let obj = SealedObject { public: vec![1, 2], private: vec![3], srk_name: vec![4], policy_digest: policy.digest() };
        SlotFile::new(Slot::Current, &obj, &policy, k.fingerprint(b"salt"), b"salt")
    }

    #[test]
    fn authorize_slot_round_trips_and_edits_are_corrupt() {
        let a = key("a");
        let s = authorize_slot(&a);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"kind\":\"authorize\"") && text.contains("\"signed_pcrs\":[11]"), "{text}");
        let back: SlotFile = serde_json::from_str(&text).unwrap();
        let p = Path::new("current.json");
        let (_, policy) = back.decode(p).unwrap();
        let Policy::Authorize { signed_pcrs, values, key } = &policy else { panic!("{policy:?}") };
        assert_eq!(signed_pcrs, &vec![11]);
        assert_eq!(values.keys().copied().collect::<Vec<_>>(), vec![7, 15]);
        assert_eq!(key.der(), PcrPublicKey::from_pem(P256_PEM.as_bytes()).unwrap().der());

        // Another literal value, another key, or PCR 11 made literal: the digest no longer fits.
        let mut edited = s.clone();
        if let StoredPolicy::Authorize { pcrs, .. } = &mut edited.policy {
            pcrs.insert("7".into(), "00".repeat(32));
        }
        assert!(edited.decode(p).unwrap_err().to_string().contains("edited"));
        let mut edited = s.clone();
        if let StoredPolicy::Authorize { public_key_fingerprint, .. } = &mut edited.policy {
            *public_key_fingerprint = "00".repeat(32);
        }
        assert!(edited.decode(p).unwrap_err().to_string().contains("fingerprint"));
        let mut edited = s.clone();
        if let StoredPolicy::Authorize { pcrs, .. } = &mut edited.policy {
            pcrs.insert("11".into(), "00".repeat(32));
        }
        assert!(matches!(edited.decode(p), Err(KeystoreError::Corrupt { .. })));
    }

    #[test]
    fn old_pcr_slot_files_still_read() {
        // A v1 slot as written before signed policies existed.
        let a = key("a");
        let s = slot(&a);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"kind\":\"pcr\""));
        let (_, policy) = serde_json::from_str::<SlotFile>(&text).unwrap().decode(Path::new("c.json")).unwrap();
        assert!(matches!(policy, Policy::Pcr { .. }));
    }

    #[test]
    fn the_window_copy_is_its_own_file_and_leaves_current_and_previous_alone() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path());
        let (a, b) = (key("a"), key("b"));
        ks.store_current(&slot(&a), &a).unwrap();
        ks.store_window(&slot(&b)).unwrap();
        let w = ks.load(Slot::Window).unwrap().unwrap();
        assert_eq!((w.slot, w.key_fingerprint.clone()), (Slot::Window, b.fingerprint(b"salt")));
        assert!(ks.slot_path(Slot::Window).ends_with("keys/window.json"));
        assert!(ks.load(Slot::Previous).unwrap().is_none());
        assert_eq!(ks.load(Slot::Current).unwrap().unwrap().key_fingerprint, a.fingerprint(b"salt"));
        let claim = WindowClaim { boot_id: "b".into(), pcr7: "00".repeat(32), copy: w.key_fingerprint.clone(), claimed_in: Some("b".into()), unlocked: false };
        ks.store_window_claim(&claim).unwrap();
        assert_eq!(ks.load_window_claim(), Some(claim.clone()));
        // A claim of another copy grants nothing; a new copy removes any claim.
        ks.store_window_claim(&WindowClaim { copy: "another copy".into(), ..claim.clone() }).unwrap();
        assert_eq!(ks.load_window_claim(), None, "a claim of another copy");
        ks.store_window_claim(&claim).unwrap();
        ks.store_window(&slot(&b)).unwrap();
        assert!(!ks.claim_path().exists(), "a new copy removes the claim");
        ks.store_window_claim(&WindowClaim { copy: ks.load(Slot::Window).unwrap().unwrap().key_fingerprint, ..claim.clone() }).unwrap();
        assert!(ks.drop_window().unwrap());
        assert_eq!(ks.load_window_claim(), None, "the claim goes with the copy");
        assert!(!ks.drop_window().unwrap(), "nothing left to drop");
        assert!(ks.load(Slot::Window).unwrap().is_none());
    }

    #[test]
    fn foreign_version_is_rejected() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::new(d.path());
        let a = key("a");
        let mut s = slot(&a);
        s.version = 99;
        std::fs::create_dir_all(ks.keys_dir()).unwrap();
        std::fs::write(ks.slot_path(Slot::Current), serde_json::to_vec(&s).unwrap()).unwrap();
        assert!(ks.load(Slot::Current).unwrap_err().to_string().contains("version 99"));
    }
}
