//! The status document: `swarmseal status --json` and `GET /swarmseal/v1/status` (agent).
//!
//! Written by the agent (`swarmseal::boot::status`), read by `swarmseal fleet`, the qemu
//! scenario tests and the image's scripts (with `jq`). The JSON shape is an interface: every
//! field below is always present (`null` when unknown) unless its doc says otherwise, and the
//! names are the JSON keys. Objects are emitted with sorted keys (through `serde_json::Value`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The local engine as `GET /info` and `GET /swarm` show it, or why it could not be asked.
    pub swarm: Swarm,
    /// The sealed slots (`current`, `previous`): `null` when the slot is empty.
    pub sealed: Slots,
    /// Whether `current` no longer holds the engine's unlock key; `null` when the engine's key
    /// is not readable now (not an active manager with autolock on).
    pub sealed_key_stale: Option<bool>,
    /// A key change an interrupted command left unfinished (its write-ahead marker).
    pub change_pending: Option<ChangePending>,
    pub tpm: Tpm,
    /// Whether this boot is phase-locked (the key was unsealed once); `null`: the TPM did not answer.
    pub phase_locked: Option<bool>,
    /// The PCR the phase lock extends (`[tpm] phase_pcr`).
    pub phase_pcr: u8,
    pub proxy: Proxy,
    /// The age-encrypted escrow copy of the unlock key, when `[escrow]` is configured.
    pub escrow: Option<PathBuf>,
    /// Summary of the last CIS report (`<state_dir>/bench/latest.json`), if any.
    pub bench: Option<Bench>,
    /// `IMAGE_ID` and `IMAGE_VERSION` of os-release.
    pub image: Image,
    /// The clock as chronyd keeps it (synchronised, offset in seconds, source, authenticated);
    /// `null` from an agent that does not ask (absent from older agents' documents).
    #[serde(default)]
    pub time: Option<crate::time::TimeSync>,
    /// The firmware window (`POST /swarmseal/v1/var/firmware-window`): `{"armed": RECORD or
    /// null, "last": the last boot decision on a changed PCR 7 or an expiry, or null,
    /// "key_sealed": true}` (`key_sealed` only while the window copy of the unlock key exists);
    /// `null` outside the appliance (absent from older agents' documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_window: Option<serde_json::Value>,
}

/// `swarm`: the engine's state, or only `error` when the engine does not answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Swarm {
    Reached {
        /// `Swarm.LocalNodeState`: `inactive`, `pending`, `active`, `error`, `locked`.
        state: String,
        node_id: Option<String>,
        manager: bool,
        /// `null` unless an active manager (only a manager can read the swarm spec).
        autolock: Option<bool>,
        /// `Swarm.Error` of `GET /info`.
        error: Option<String>,
        /// The negotiated Engine API version, e.g. `1.41`.
        api_version: String,
    },
    Unreachable {
        error: String,
    },
}

impl Swarm {
    /// `Swarm.LocalNodeState`, when the engine answered.
    pub fn state(&self) -> Option<&str> {
        match self {
            Swarm::Reached { state, .. } => Some(state),
            Swarm::Unreachable { .. } => None,
        }
    }

    /// The node ID, when the engine answered and the node has one.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Swarm::Reached { node_id, .. } => node_id.as_deref(),
            Swarm::Unreachable { .. } => None,
        }
    }
}

/// `sealed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    pub current: Option<Slot>,
    pub previous: Option<Slot>,
}

/// One sealed slot: when it was sealed and to what, or why its file is unreadable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Slot {
    Sealed {
        /// RFC 3339, UTC.
        created: String,
        /// The slot file's policy as stored (`{"kind": "pcr", …}` or `{"kind": "authorize", …}`).
        policy: serde_json::Value,
        /// Why this slot would not unseal in this boot (`PCR n sealed X now Y`, an unsigned PCR
        /// value); empty: it would. `null`: the TPM or the slot could not be read.
        differs: Option<Vec<String>>,
    },
    Unreadable {
        error: String,
    },
}

/// `change_pending`: the operation (`init`, `autolock`, `rotate`) and when it started (Unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangePending {
    pub op: String,
    pub started: u64,
}

/// `tpm`: the TCTI, and this boot's policy PCR values (hex, pre-phase-lock) or the error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tpm {
    pub tcti: String,
    pub reachable: bool,
    /// PCR index (decimal string) → SHA-256 value (hex); present when reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcrs: Option<BTreeMap<String, String>>,
    /// Present when not reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `proxy`: `[proxy] enabled` and `listen` (`ADDR:PORT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    pub enabled: bool,
    pub listen: String,
}

/// `bench`: the last report's `checks`, `score` and `end`, as that report has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bench {
    pub checks: Option<serde_json::Value>,
    pub score: Option<serde_json::Value>,
    pub end: Option<serde_json::Value>,
}

/// `image`: os-release's `IMAGE_ID` and `IMAGE_VERSION`, and the digest of the image's SBOM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub id: Option<String>,
    pub version: Option<String>,
    /// `sha256:<hex>` of the image's SBOM (`[update] sbom`, `/usr/share/swarmseal/sbom.cdx.json`
    /// in the verity root; CycloneDX 1.5, docs/sbom.md); `null` when the file is absent
    /// (an agent outside the image) or unreadable. Absent from older agents' documents.
    #[serde(default)]
    pub sbom_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Both shapes of every two-shaped field, through the type and back, unchanged.
    #[test]
    fn every_shape_round_trips_unchanged() {
        let docs = [
            json!({
                "swarm": {"state": "active", "node_id": "abc", "manager": true, "autolock": true, "error": null, "api_version": "1.41"},
                "sealed": {"current": {"created": "2026-12-06T16:00:00Z", "policy": {"kind": "pcr", "pcrs": {"7": "00"}}, "differs": []}, "previous": null},
                "sealed_key_stale": false,
                "change_pending": null,
                "tpm": {"tcti": "swtpm:port=1", "pcrs": {"7": "00", "11": "ff"}, "reachable": true},
                "phase_locked": true,
                "phase_pcr": 11,
                "proxy": {"enabled": true, "listen": "0.0.0.0:2376"},
                "escrow": null,
                "bench": {"checks": 117, "score": 80, "end": null},
                "image": {"id": "swarmseal", "version": "1.2", "sbom_sha256": "sha256:5e"},
                "time": {"synchronised": true, "offset_seconds": -0.25, "source": "time.cloudflare.com", "authenticated": true, "problems": [], "error": null},
                "firmware_window": {"armed": null, "last": {"outcome": "accepted", "at": 1765036800u64, "changed": "dbx changed", "boot_id": "6b1d7c52-93a0-4e57-8f4e-2a9a3cb0d4e1"}, "key_sealed": true},
            }),
            json!({
                "swarm": {"error": "cannot reach the engine"},
                "sealed": {"current": {"error": "corrupt"}, "previous": {"created": "x", "policy": {}, "differs": null}},
                "sealed_key_stale": null,
                "change_pending": {"op": "rotate", "started": 1765036800u64},
                "tpm": {"tcti": "device:/dev/tpmrm0", "reachable": false, "error": "no TPM"},
                "phase_locked": null,
                "phase_pcr": 11,
                "proxy": {"enabled": false, "listen": "0.0.0.0:2376"},
                "escrow": "/var/lib/swarmseal/escrow/unlock-key.age",
                "bench": null,
                "image": {"id": null, "version": null, "sbom_sha256": null},
                "time": {"synchronised": false, "offset_seconds": null, "source": null, "authenticated": null, "problems": [], "error": "chronyd could not be asked"},
            }),
        ];
        for doc in docs.clone() {
            let s: Status = serde_json::from_value(doc.clone()).expect("deserializes");
            assert_eq!(serde_json::to_value(&s).unwrap(), doc);
        }
        // An older agent's image (no SBOM digest) still reads.
        let old: Image = serde_json::from_value(json!({"id": "swarmseal", "version": "1.1"})).unwrap();
        assert_eq!(old.sbom_sha256, None);
        // An older agent's document (no `time`) still reads.
        let mut doc = docs[0].clone();
        doc.as_object_mut().unwrap().remove("time");
        assert_eq!(serde_json::from_value::<Status>(doc).unwrap().time, None);
    }
}
