//! The Swarm unlock key as a secret value.
//!
//! The key (`SWMKEY-1-…`, the string `docker swarm unlock-key -q` prints) is
//! held only in [`UnlockKey`], which zeroizes its bytes on drop and never
//! prints them through `Debug` or `Display`.

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A Swarm unlock key. `Debug` prints `UnlockKey(<redacted>)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct UnlockKey(String);

/// The key does not look like a Swarm unlock key.
#[derive(Debug, thiserror::Error)]
#[error("this is not a Swarm unlock key: it must start with `SWMKEY-1-` (what `docker swarm unlock-key -q` prints)")]
pub struct MalformedKey;

impl UnlockKey {
    /// Wrap a key, trimming surrounding white space. Errors if it does not
    /// start with `SWMKEY-1-`; the input is zeroized either way.
    pub fn new(raw: String) -> Result<Self, MalformedKey> {
        let raw = Zeroizing::new(raw);
        let trimmed = raw.trim();
        if !trimmed.starts_with("SWMKEY-1-") || trimmed.len() < 20 || trimmed.contains(char::is_whitespace) {
            return Err(MalformedKey);
        }
        Ok(UnlockKey(trimmed.to_owned()))
    }

    /// Rebuild a key from unsealed bytes (zeroized by the caller's `Zeroizing`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MalformedKey> {
        let s = std::str::from_utf8(bytes).map_err(|_| MalformedKey)?;
        Self::new(s.to_owned())
    }

    /// The key text. Only for sending it to the engine, the TPM or the
    /// operator's terminal; never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Salted SHA-256 fingerprint (hex) used to tell whether the sealed key
    /// equals the engine's current key without unsealing. The key holds 256
    /// random bits, so the fingerprint reveals nothing usable.
    pub fn fingerprint(&self, salt: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(b"swarmseal-unlock-key-fingerprint\0");
        h.update(salt);
        h.update(self.0.as_bytes());
        hex::encode(h.finalize())
    }
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_shape_checked() {
        let k = UnlockKey::new(" SWMKEY-1-abcdefghijklmnopqrstuvwxyz0123456789\n".into()).unwrap();
        assert_eq!(format!("{k:?}"), "UnlockKey(<redacted>)");
        assert_eq!(k.expose(), "SWMKEY-1-abcdefghijklmnopqrstuvwxyz0123456789");
        assert!(UnlockKey::new("hunter2".into()).is_err());
        assert_ne!(k.fingerprint(b"a"), k.fingerprint(b"b"));
    }
}
