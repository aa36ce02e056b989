//! Escrow for headless managers: the unlock key encrypted to the operator's
//! age X25519 recipient (`[escrow] recipient = "age1…"`), written to
//! `<state_dir>/escrow/unlock-key.age` at init and after every rotation.
//!
//! The operator decrypts it offline with `age -d -i key.txt unlock-key.age`.
//! The appliance's `/var` recovery key is escrowed the same way (see [`crate::var`]).
//! The plaintext key never touches the disk.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::keystore::{write_atomic, KeystoreError};
use crate::secret::UnlockKey;

#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    #[error("escrow.recipient is not a valid age X25519 recipient: {0}")]
    Recipient(String),
    #[error("cannot encrypt the escrow copy: {0}")]
    Encrypt(String),
    #[error(transparent)]
    Write(#[from] KeystoreError),
}

/// Path of the escrow file.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("escrow").join("unlock-key.age")
}

/// Check a recipient string.
pub fn parse_recipient(recipient: &str) -> Result<age::x25519::Recipient, EscrowError> {
    age::x25519::Recipient::from_str(recipient.trim()).map_err(|e| EscrowError::Recipient(e.to_string()))
}

/// Encrypt `key` to `recipient` (age v1 binary format) and write it atomically, mode 0600.
pub fn write(state_dir: &Path, recipient: &str, key: &UnlockKey) -> Result<PathBuf, EscrowError> {
    let p = path(state_dir);
    write_secret(&p, recipient, key.expose().as_bytes())?;
    Ok(p)
}

/// Encrypt `secret` to `recipient` (age v1, X25519) and write it atomically to
/// `file` (mode 0600, parent created). Only ciphertext reaches the disk.
pub fn write_secret(file: &Path, recipient: &str, secret: &[u8]) -> Result<(), EscrowError> {
    let r = parse_recipient(recipient)?;
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).map_err(|e| EscrowError::Encrypt(e.to_string()))?;
    let mut out = Vec::new();
    {
        use std::io::Write;
        let mut w = enc.wrap_output(&mut out).map_err(|e| EscrowError::Encrypt(e.to_string()))?;
        w.write_all(secret).map_err(|e| EscrowError::Encrypt(e.to_string()))?;
        w.finish().map_err(|e| EscrowError::Encrypt(e.to_string()))?;
    }
    let dir = file.parent().expect("has parent");
    std::fs::create_dir_all(dir).map_err(|e| KeystoreError::Io { path: dir.to_path_buf(), source: e })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| KeystoreError::Io { path: dir.to_path_buf(), source: e })?;
    }
    write_atomic(file, &out, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escrow_round_trip_with_identity() {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let d = tempfile::tempdir().unwrap();
        let key = UnlockKey::new("SWMKEY-1-escrowtestescrowtestescrowtest".into()).unwrap();
        let p = write(d.path(), &recipient, &key).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("SWMKEY"));
        let dec = age::Decryptor::new(&bytes[..]).unwrap();
        let mut r = dec.decrypt(std::iter::once(&id as &dyn age::Identity)).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut r, &mut s).unwrap();
        assert_eq!(s, key.expose());
        assert!(parse_recipient("age1nope").is_err());
    }
}
