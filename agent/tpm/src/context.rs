//! The open TPM ([`Tpm`]: one ESAPI context over one TCTI connection), the salted
//! sessions every secret-carrying command runs in (TPM 2.0 Part 3, 11.1
//! TPM2_StartAuthSession), and [`Scoped`], the guard that releases every handle on every
//! path: without a resource manager (swtpm, `device:/dev/tpm0`) a leaked handle fills the TPM.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::SymmetricDefinition;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

use crate::error::{failed, TpmError};

/// An open TPM context (one ESAPI context over one TCTI connection).
pub struct Tpm {
    pub(crate) ctx: Context,
    tcti: String,
}

impl Tpm {
    /// Open the TPM named by a TCTI string: `device:/dev/tpmrm0` on the appliance,
    /// `swtpm:host=127.0.0.1,port=2321` for a software TPM, `mssim:…`, `tabrmd:…`.
    ///
    /// Errors: `Unavailable` when the string is not a TCTI or the TPM cannot be reached.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let unavailable = |message: String| TpmError::Unavailable { tcti: tcti.to_string(), message };
        let conf = TctiNameConf::from_str(tcti).map_err(|e| {
            unavailable(format!(
                "not a TCTI configuration ({e}); use `device:/dev/tpmrm0` or `swtpm:host=HOST,port=PORT`"
            ))
        })?;
        let ctx = Context::new(conf).map_err(|e| {
            unavailable(format!(
                "the connection failed ({e}); check that the TPM device exists (or the software TPM is running) and is accessible"
            ))
        })?;
        Ok(Tpm { ctx, tcti: tcti.to_string() })
    }

    /// Put this context's TCTI in an `Unavailable` raised by a command (see [`failed`]).
    pub(crate) fn reached_through(&self, e: TpmError) -> TpmError {
        match e {
            TpmError::Unavailable { message, .. } => TpmError::Unavailable { tcti: self.tcti.clone(), message },
            other => other,
        }
    }

    /// The TCTI string this context was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }
}

/// A TPM handle released when the guard goes out of scope, on every path. It holds the
/// context so the code keeps using it through the guard; guards nest (the innermost is
/// released first).
pub(crate) struct Scoped<'c> {
    ctx: &'c mut Context,
    handle: ObjectHandle,
    release: Release,
}

enum Release {
    /// Transient object or session: TPM2_FlushContext (TPM 2.0 Part 3).
    Flush,
    /// Persistent object: only release the ESAPI resource (Esys_TR_Close); it stays in the TPM.
    Close,
}

impl<'c> Scoped<'c> {
    pub(crate) fn flush(ctx: &'c mut Context, handle: ObjectHandle) -> Self {
        Scoped { ctx, handle, release: Release::Flush }
    }
    pub(crate) fn close(ctx: &'c mut Context, handle: ObjectHandle) -> Self {
        Scoped { ctx, handle, release: Release::Close }
    }
}

impl Deref for Scoped<'_> {
    type Target = Context;
    fn deref(&self) -> &Context {
        self.ctx
    }
}

impl DerefMut for Scoped<'_> {
    fn deref_mut(&mut self) -> &mut Context {
        self.ctx
    }
}

impl Drop for Scoped<'_> {
    fn drop(&mut self) {
        let released = match self.release {
            Release::Flush => self.ctx.flush_context(self.handle),
            Release::Close => self.ctx.tr_close(&mut self.handle),
        };
        if let Err(e) = released {
            tracing::warn!("could not release TPM handle: {e}");
        }
    }
}

/// Start a session salted to the SRK (the salt is encrypted to its public key), with
/// AES-128-CFB parameter encryption and sha256 (TPM 2.0 Part 3, TPM2_StartAuthSession).
/// The caller puts the returned session in a [`Scoped`] guard at once.
pub(crate) fn start_salted_session(ctx: &mut Context, srk: KeyHandle, kind: SessionType) -> Result<AuthSession, TpmError> {
    const OP: &str = "TPM2_StartAuthSession";
    ctx.execute_without_session(|c| {
        c.start_auth_session(Some(srk), None, None, kind, SymmetricDefinition::AES_128_CFB, HashingAlgorithm::Sha256)
    })
    .map_err(failed(OP))?
    .ok_or(TpmError::Command { op: OP, message: "the TPM returned no session".into() })
}

/// decrypt: the first command parameter is encrypted; encrypt: the first response
/// parameter is encrypted (TPM 2.0 Part 1, 21 Session-based encryption).
pub(crate) fn set_session_attributes(
    ctx: &mut Context,
    session: AuthSession,
    decrypt: bool,
    encrypt: bool,
) -> Result<(), TpmError> {
    let (attributes, mask) =
        SessionAttributesBuilder::new().with_continue_session(true).with_decrypt(decrypt).with_encrypt(encrypt).build();
    ctx.tr_sess_set_attributes(session, attributes, mask).map_err(failed("Esys_TRSess_SetAttributes"))
}
