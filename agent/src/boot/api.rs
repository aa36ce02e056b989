//! The agent endpoints behind the proxy (`/swarmseal/v1/…`): [`crate::proxy::AgentApi`].

use std::sync::Arc;

use super::commands::{active_manager, engine, state_error};
use super::{BootError, Ctx};
use crate::config::Config;
use crate::proxy::{ApiError, ApiErrorKind, BoxFuture};
use crate::keystore::SlotFile;
use crate::secret::UnlockKey;
use crate::swarm::NodeState;
use zeroize::Zeroizing;

/// The agent endpoints' implementation, over a [`Ctx`].
pub(super) struct AgentImpl {
    pub(super) ctx: Ctx,
    attest_limit: AttestLimit,
}

impl AgentImpl {
    pub(super) fn new(ctx: Ctx) -> Arc<AgentImpl> {
        Arc::new(AgentImpl { ctx, attest_limit: AttestLimit::default() })
    }
}

/// How many `GET /swarmseal/v1/attest` a manager answers in a minute.
pub const ATTEST_PER_MINUTE: usize = 30;

/// `GET /swarmseal/v1/attest` costs a TPM2_CreatePrimary and a TPM2_Quote (about a second on a
/// real TPM, which serves nothing else meanwhile): one at a time, at most [`ATTEST_PER_MINUTE`]
/// a minute, else 429 (the proxy's error table), whoever asks.
#[derive(Default)]
struct AttestLimit {
    busy: tokio::sync::Mutex<()>,
    recent: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl AttestLimit {
    /// A place for one attestation, held until the guard drops; 429 when there is none.
    fn admit(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);
        let busy = self.busy.try_lock().map_err(|_| ApiError::new(ApiErrorKind::TooManyRequests, "an attestation is already running on this manager: ask again when it has answered"))?;
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        while recent.front().is_some_and(|t| now.duration_since(*t) >= MINUTE) {
            recent.pop_front();
        }
        if let (true, Some(oldest)) = (recent.len() >= ATTEST_PER_MINUTE, recent.front()) {
            let wait = MINUTE.saturating_sub(now.duration_since(*oldest)).as_secs() + 1;
            return Err(ApiError::new(ApiErrorKind::TooManyRequests, format!("{ATTEST_PER_MINUTE} attestations in the last minute, the most this manager answers: ask again in {wait} s")));
        }
        recent.push_back(now);
        Ok(busy)
    }
}

/// The answer to an arming that the root service confirmed (`lines`, `window`), with what
/// became of the window copy of the swarm unlock key (`sealed`): `key_sealed: true` (HTTP 200);
/// when it failed, HTTP 500 with the same fields (`armed: true`, `key_sealed: false`,
/// `key_error`) and a `message` saying that `/var`'s window IS armed but the swarm will stay
/// locked after the firmware change.
fn window_answer(lines: Vec<String>, window: Option<crate::firmware::Record>, sealed: Result<SlotFile, BootError>) -> Result<serde_json::Value, ApiError> {
    match sealed {
        Ok(slot) => Ok(serde_json::json!({"armed": true, "output": lines, "window": window, "key_sealed": true, "key_policy": slot.policy})),
        Err(e) => {
            tracing::error!(event = "firmware_window_key_failed", security = true, error = %e, "the firmware window is armed for /var, but the swarm unlock key could not be sealed for it: after the firmware change the swarm stays locked (unlock it through the proxy with the escrowed key, then reseal)");
            let serde_json::Value::Object(details) = serde_json::json!({
                "armed": true, "output": lines, "window": window, "key_sealed": false,
                "key_error": format!("{e}. /var's window is armed; without the window copy of the unlock key the swarm stays locked after the firmware change: unlock it through the proxy with the escrowed key, then POST /swarmseal/v1/reseal (or arm again once this is fixed)"),
            }) else {
                unreachable!("a JSON object literal")
            };
            Err(ApiError::new(
                ApiErrorKind::Internal,
                "/var's firmware window IS armed, but the window copy of the swarm unlock key could not be sealed (key_error): the swarm will stay locked after the firmware change. Disarm (?disarm=1), fix the cause and arm again — or go ahead knowing that the swarm must then be unlocked by hand through the proxy with the escrowed key and resealed",
            )
            .with_details(details))
        }
    }
}

/// The answer to a disarming the root service confirmed: the window copy of the swarm unlock
/// key is deleted here too (`dropped`, an older one the root service missed). A failed delete
/// is HTTP 500 with `armed: false` and `key_error`: `/var`'s window is disarmed, but a key
/// without PCR 7 is still on disk.
fn disarm_answer(lines: Vec<String>, window: Option<crate::firmware::Record>, dropped: Result<bool, crate::keystore::KeystoreError>) -> Result<serde_json::Value, ApiError> {
    match dropped {
        Ok(_) => Ok(serde_json::json!({"armed": false, "output": lines, "window": window})),
        Err(e) => {
            tracing::error!(event = "firmware_window_key_drop_failed", security = true, error = %e, "the firmware window was disarmed, but the window copy of the swarm unlock key could not be deleted");
            let serde_json::Value::Object(details) = serde_json::json!({"armed": false, "output": lines, "window": window, "key_error": format!("could not delete the window copy of the swarm unlock key: {e}")}) else {
                unreachable!("a JSON object literal")
            };
            Err(ApiError::new(ApiErrorKind::Internal, "/var's firmware window is disarmed, but the window copy of the swarm unlock key (sealed without PCR 7) could not be deleted (key_error): fix the cause and disarm again").with_details(details))
        }
    }
}

impl crate::proxy::AgentApi for AgentImpl {
    fn metrics(&self) -> Arc<swarmseal_common::metrics::Metrics> {
        self.ctx.metrics.clone()
    }
    fn status(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send + '_>> {
        Box::pin(async move { serde_json::to_value(super::status(&self.ctx).await).unwrap_or_default() })
    }
    fn bench(&self) -> BoxFuture<'_, Option<Vec<u8>>> {
        Box::pin(super::latest_bench_report(&self.ctx.cfg))
    }
    fn reseal(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(async move {
            let r: Result<SlotFile, BootError> = async {
                let engine = engine(&self.ctx.cfg).await?;
                active_manager(&engine).await?;
                let _lock = self.ctx.lock().await?;
                let key = engine.unlock_key().await?.ok_or_else(|| state_error(NodeState::Active, "autolock is off"))?;
                let slot = self.ctx.seal(&key).await?;
                let _ = self.ctx.clear_pending().await;
                Ok(slot)
            }
            .await;
            match r {
                Ok(slot) => {
                    tracing::warn!(event = "reseal", security = true, "unlock key resealed on request through the proxy");
                    Ok(serde_json::json!({"sealed": true, "created": slot.created, "policy": slot.policy}))
                }
                Err(BootError::State { state, .. }) => Err(ApiError::new(ApiErrorKind::Conflict, format!("the swarm is {state}: unlock it first (`docker swarm unlock` through this proxy), then reseal"))),
                Err(e @ BootError::SealRefused { .. }) => Err(ApiError::new(ApiErrorKind::Conflict, e.to_string())),
                Err(e) => Err(ApiError::new(ApiErrorKind::Internal, e.to_string())),
            }
        })
    }
    fn recover(&self, key: Option<UnlockKey>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(crate::recover::via_proxy(&self.ctx, key))
    }
    fn var_enroll_tpm(&self, recovery_key: Zeroizing<String>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        Box::pin(async move {
            let r = crate::var::enroll_tpm_via(std::path::Path::new(crate::var::ENROLL_SOCKET), &recovery_key).await;
            match r {
                Ok(lines) => {
                    tracing::warn!(event = "var_tpm_enrolled", security = true, "/var re-bound to this machine's TPM on request through the proxy");
                    Ok(serde_json::json!({"enrolled": true, "output": lines}))
                }
                Err(e) => {
                    let refusal = ApiError::from(&e);
                    tracing::warn!(event = "var_tpm_enroll_failed", security = true, status = refusal.status(), "{e}");
                    Err(refusal)
                }
            }
        })
    }
    fn var_firmware_window(&self, arm: Option<(u32, Zeroizing<String>)>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        Box::pin(async move {
            let socket = std::path::Path::new(crate::firmware::SOCKET);
            let r = crate::firmware::request_via(socket, arm.as_ref().map(|(d, k)| (*d, k.as_str()))).await;
            match r {
                Ok(lines) => {
                    let window = crate::firmware::record(&self.ctx.cfg.state_dir).ok().flatten();
                    match &window {
                        Some(w) if arm.is_some() => tracing::warn!(event = "firmware_window_armed", security = true, expires_at = w.expires_at, "a firmware window was armed on request through the proxy: /var also opens without PCR 7 until the first boot after a PCR 7 change or the expiry"),
                        _ => tracing::warn!(event = "firmware_window_disarmed", security = true, "the firmware window was disarmed on request through the proxy"),
                    }
                    if arm.is_none() {
                        // The root service deleted it with the window; this covers an older one.
                        let ks = self.ctx.ks.clone();
                        return disarm_answer(lines, window, super::blocking(move || ks.drop_window()).await);
                    }
                    window_answer(lines, window, self.ctx.seal_window_key().await)
                }
                Err(e) => {
                    let refusal = ApiError::from(&e);
                    tracing::warn!(event = "var_firmware_window_failed", security = true, status = refusal.status(), "{e}");
                    Err(refusal)
                }
            }
        })
    }
    fn update(&self, from: crate::proxy::UpdateFrom, install: crate::proxy::UpdateInstall) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, ApiError>> + Send + '_>> {
        use crate::update::Install;
        let install = match install {
            crate::proxy::UpdateInstall::Full { reboot } => Install::Full { reboot },
            crate::proxy::UpdateInstall::PartitionsOnly => Install::PartitionsOnly,
        };
        Box::pin(async move {
            let r = receive_and_apply(&self.ctx.cfg, from, install).await;
            let (reboot, partitions_only) = (install == Install::Full { reboot: true }, install == Install::PartitionsOnly);
            match r {
                Ok(version) if partitions_only => {
                    tracing::warn!(event = "image_update_partitions", security = true, version = %version, "a signed release was staged and its root and root-verity written into the inactive slot (no boot entry yet) on request through the proxy");
                    Ok(serde_json::json!({"version": version, "staged": true, "reboot": false, "partitions_only": true}))
                }
                Ok(version) => {
                    tracing::warn!(event = "image_update", security = true, version = %version, reboot, "a signed release was staged and installed into the inactive slot on request through the proxy");
                    Ok(serde_json::json!({"version": version, "staged": true, "reboot": reboot, "partitions_only": false}))
                }
                Err(e) => {
                    let refusal = ApiError::from(&e);
                    tracing::warn!(event = "image_update_refused", security = true, status = refusal.status(), "{e}");
                    Err(refusal)
                }
            }
        })
    }
    fn update_partial(&self) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        Box::pin(async move {
            match crate::update::held(&self.ctx.cfg.update_dir()).await {
                Ok(held) => Ok(serde_json::json!({ "partial": held })),
                Err(e) => Err(ApiError::from(&e)),
            }
        })
    }
    fn attest(&self, nonce: Vec<u8>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        Box::pin(async move {
            let _admitted = self.attest_limit.admit()?;
            attest(&self.ctx, nonce).await.map(|a| serde_json::to_value(a).unwrap_or_default())
        })
    }
    fn attest_activate(&self, credential_blob: Vec<u8>, secret: Vec<u8>) -> BoxFuture<'_, Result<serde_json::Value, ApiError>> {
        Box::pin(async move {
            // The same TPM work as a quote (two CreatePrimary and a command): the same limit.
            let _admitted = self.attest_limit.admit()?;
            let cert_info = activate(&self.ctx, credential_blob, secret).await?;
            use base64::Engine as _;
            Ok(serde_json::json!({ "cert_info": base64::engine::general_purpose::STANDARD.encode(&*cert_info) }))
        })
    }
    fn escrow(&self, file: crate::proxy::EscrowFile) -> BoxFuture<'_, Option<Vec<u8>>> {
        let dir = &self.ctx.cfg.state_dir;
        let path = match file {
            crate::proxy::EscrowFile::UnlockKey => self.ctx.cfg.escrow.recipient.as_ref().map(|_| crate::escrow::path(dir)),
            // Written by the privileged `swarmseal var escrow-recovery-key`.
            crate::proxy::EscrowFile::VarRecoveryKey => Some(crate::var::escrow_path(dir)),
        };
        Box::pin(async move { tokio::fs::read(path?).await.ok() })
    }
}

/// The answer of `POST /swarmseal/v1/var/enroll-tpm` for this error.
impl From<&crate::var::EnrollError> for ApiError {
    fn from(e: &crate::var::EnrollError) -> ApiError {
        use crate::var::EnrollError as E;
        let kind = match e {
            E::BadKey => ApiErrorKind::BadRequest,
            E::NoService { .. } => ApiErrorKind::NotFound,
            E::NoAnswer => ApiErrorKind::Unavailable,
            E::NotFinished(_) => ApiErrorKind::Unprocessable,
            E::Io(_) => ApiErrorKind::Internal,
            E::Timeout => ApiErrorKind::GatewayTimeout,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// The answer of `POST /swarmseal/v1/update` for this error (the proxy maps the kind to the status).
impl From<&crate::update::UpdateError> for ApiError {
    fn from(e: &crate::update::UpdateError) -> ApiError {
        use crate::update::UpdateError as E;
        use swarmseal_release::ReleaseError as R;
        let kind = match e {
            E::Release(R::NotSigned(_) | R::Invalid(_) | R::HashMismatch { .. }) | E::Altered(_) => ApiErrorKind::Unprocessable,
            E::Release(R::TooLarge { .. }) => ApiErrorKind::PayloadTooLarge,
            E::Release(R::Body(_)) => ApiErrorKind::BadRequest,
            E::Release(R::Key { .. } | R::Io { .. } | R::Pack(_)) => ApiErrorKind::Internal,
            E::Busy | E::Resume(_) | E::NotStaged(_) => ApiErrorKind::Conflict,
            E::Request(_) | E::NoSource => ApiErrorKind::BadRequest,
            E::ApplyUnavailable(_) | E::NoSpace { .. } => ApiErrorKind::Unavailable,
            E::Tool { .. } | E::Source { .. } => ApiErrorKind::BadGateway,
            E::Io { .. } | E::SourceSetup(_) => ApiErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// `POST /swarmseal/v1/update`: check the size, receive (the upload, or the release fetched
/// from `[update] source`: [`crate::update::source::fetch_and_receive`]), verify and stage it
/// (see [`crate::update::receive`]), then hand it to the apply service, holding the staging
/// lock until it answered; `?staged=V` takes the release already staged
/// ([`crate::update::held_staged`]). Returns the version.
async fn receive_and_apply(cfg: &Config, from: crate::proxy::UpdateFrom, install: crate::update::Install) -> Result<String, crate::update::UpdateError> {
    use crate::proxy::UpdateFrom;
    use crate::update::{self, UpdateError};
    let max = cfg.update.max_bytes;
    let staged = match from {
        UpdateFrom::Upload { body, content_length } => {
            if content_length.is_some_and(|n| n > max) {
                return Err(UpdateError::Release(update::ReleaseError::TooLarge { max }));
            }
            let key = update::load_key(&cfg.update.public_key)?;
            update::receive(&key, &cfg.update_dir(), max, update::BodyReader::new(body)).await?
        }
        UpdateFrom::Resume { body, content_length, offset, sums_sha256 } => {
            if content_length.is_some_and(|n| n.saturating_add(offset) > max) {
                return Err(UpdateError::Release(update::ReleaseError::TooLarge { max }));
            }
            let key = update::load_key(&cfg.update.public_key)?;
            update::receive_resume(&key, &cfg.update_dir(), max, update::BodyReader::new(body), offset, &sums_sha256).await?
        }
        UpdateFrom::Source { version } => {
            let key = update::load_key(&cfg.update.public_key)?;
            update::source::fetch_and_receive(cfg, &key, &version).await?
        }
        UpdateFrom::Staged { version } => {
            if !update::valid_version(&version) {
                return Err(UpdateError::Request(format!("?staged={}: not a release version (letters, digits, '.', '-', '~', '^')", version.escape_debug())));
            }
            update::held_staged(&cfg.update_dir(), &version).await?
        }
    };
    tracing::info!(event = "image_update_staged", version = %staged.version, dir = %staged.dir.display(), "release verified and staged; asking the apply service to install it");
    let (reboot, stage) = match install {
        update::Install::Full { reboot } => (reboot, false),
        update::Install::PartitionsOnly => (false, true),
    };
    let lines = update::apply_via(&cfg.update.socket, &staged.version, reboot, stage).await?;
    for l in &lines {
        tracing::info!(event = "image_update_apply", version = %staged.version, "{l}");
    }
    Ok(staged.version)
}


/// `GET /swarmseal/v1/attest?nonce=HEX`: TPM2_Quote over sha256 PCRs 0–7, 11, the policy PCRs
/// and the phase PCR with `nonce`, the EK certificate, the event logs and the PCR signature
/// file ([`crate::attest::Answer`]). A TPM that does not answer is 503, another failure 500.
async fn attest(ctx: &Ctx, nonce: Vec<u8>) -> Result<crate::attest::Answer, ApiError> {
    use crate::attest::{Answer, Blob, FORMAT};
    let cfg = &ctx.cfg;
    let mut pcrs: Vec<u8> = (0..=7).chain([crate::attest::SIGNED_PCR, cfg.tpm.phase_pcr]).chain(cfg.tpm.policy_pcrs()).collect();
    pcrs.sort_unstable();
    pcrs.dedup();
    let (quote, ek) = ctx
        .tpm_retry(move |t| {
            let q = t.quote(&nonce, &pcrs)?;
            Ok((q, t.ek_certificate()?))
        })
        .await
        .map_err(|e| ApiError::new(if e.is_retryable() { ApiErrorKind::Unavailable } else { ApiErrorKind::Internal }, e.to_string()))?;
    let (firmware_log, measure_log, pcr_signature, os_release) =
        (cfg.attest.firmware_log.clone(), cfg.attest.measure_log.clone(), cfg.tpm.pcr_signature.clone(), cfg.update.os_release.clone());
    let (firmware_log, measure_log, pcr_signature, image) =
        super::blocking(move || (Blob::read(&firmware_log), Blob::read(&measure_log), Blob::read(&pcr_signature), crate::update::os_image(&os_release))).await;
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok(Answer {
        format: FORMAT.into(),
        version: 1,
        attest: b64(&quote.attest),
        signature: b64(&quote.signature),
        ak_public: b64(&quote.ak_public),
        pcrs: quote.pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect(),
        phase_pcr: cfg.tpm.phase_pcr,
        ek_certificate: match ek {
            crate::tpm::EkCert::Present { der, .. } => Blob { base64: Some(b64(&der)), absent: None },
            crate::tpm::EkCert::Absent { reason } => Blob { base64: None, absent: Some(reason) },
        },
        firmware_log,
        measure_log,
        pcr_signature,
        image_version: image["version"].as_str().map(str::to_string),
    })
}

/// `POST /swarmseal/v1/attest/activate`: the EK certificate from NV, its public key, then
/// TPM2_ActivateCredential with the AK and the EK of the TCG template of that key
/// (`swarmseal_tpm::tpm::Tpm::activate_credential`). Returns certInfo (the verifier's
/// secret). Errors: 409 no EK certificate on this TPM (or one the agent cannot read); 422
/// the TPM refused the credential, or the EK of the template is not the certificate's;
/// 503 the TPM does not answer; 500 another failure.
async fn activate(ctx: &Ctx, credential_blob: Vec<u8>, secret: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    use crate::tpm::{EkCert, EkPublicKey, TpmError};
    enum Refusal {
        NoCert(String),
    }
    let r = ctx
        .tpm_retry(move |t| {
            let der = match t.ek_certificate()? {
                EkCert::Present { der, .. } => der,
                EkCert::Absent { reason } => return Ok(Err(Refusal::NoCert(reason))),
            };
            let key = match crate::attest::ek_public_key(&der) {
                Ok(crate::attest::EkKey::Rsa { modulus, .. }) => EkPublicKey::Rsa { modulus },
                Ok(crate::attest::EkKey::Ecc { x, y }) => EkPublicKey::Ecc { x, y },
                Err(e) => return Ok(Err(Refusal::NoCert(format!("the EK certificate in NV is not usable: {e}")))),
            };
            t.activate_credential(&key, &credential_blob, &secret).map(Ok)
        })
        .await;
    match r {
        Ok(Ok(cert_info)) => Ok(cert_info),
        Ok(Err(Refusal::NoCert(why))) => Err(ApiError::new(ApiErrorKind::Conflict, format!("no EK certificate to activate a credential with: {why}"))),
        Err(e @ (TpmError::ActivationRefused { .. } | TpmError::EkMismatch { .. })) => Err(ApiError::new(ApiErrorKind::Unprocessable, e.to_string())),
        Err(e) => Err(ApiError::new(if e.is_retryable() { ApiErrorKind::Unavailable } else { ApiErrorKind::Internal }, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window copy that could not be sealed is said (`key_sealed: false`, why, what it means
    /// for the swarm), and the answer still reports `/var`'s window as armed.
    #[test]
    fn a_window_copy_that_failed_is_said_and_var_stays_armed() {
        let err = window_answer(vec!["firmware window armed until …".into()], None, Err(BootError::Tpm(crate::tpm::TpmError::Unavailable { tcti: "device:/dev/tpmrm0".into(), message: "connection refused".into() }))).unwrap_err();
        assert_eq!(err.status(), 500, "an arming whose key copy failed is not a success");
        let failed = err.body();
        assert_eq!((failed["armed"].as_bool(), failed["key_sealed"].as_bool()), (Some(true), Some(false)), "{failed}");
        let message = failed["message"].as_str().unwrap();
        assert!(message.contains("IS armed") && message.contains("stay locked after the firmware change") && message.contains("disarm"), "{message}");
        let why = failed["key_error"].as_str().unwrap();
        assert!(why.contains("connection refused") && why.contains("/var's window is armed") && why.contains("stays locked after the firmware change"), "{why}");
    }

    /// A window copy that could not be deleted on disarm is said (HTTP 500, `key_error`), the
    /// window reported disarmed.
    #[test]
    fn a_failed_drop_on_disarm_is_said() {
        assert!(disarm_answer(vec![], None, Ok(true)).is_ok());
        let err = disarm_answer(vec![], None, Err(crate::keystore::KeystoreError::Io { path: "/var/lib/swarmseal/keys/window.json".into(), source: std::io::Error::from(std::io::ErrorKind::PermissionDenied) })).unwrap_err();
        assert_eq!(err.status(), 500);
        let b = err.body();
        assert_eq!(b["armed"].as_bool(), Some(false), "{b}");
        assert!(b["key_error"].as_str().unwrap().contains("window.json"), "{b}");
    }

    #[test]
    fn attestations_are_one_at_a_time_and_limited_per_minute() {
        let limit = AttestLimit::default();
        let first = limit.admit().unwrap();
        let busy = limit.admit().map(|_| ()).unwrap_err();
        assert_eq!((busy.kind, busy.message.contains("already running")), (ApiErrorKind::TooManyRequests, true), "{busy:?}");
        drop(first);
        for _ in 1..ATTEST_PER_MINUTE {
            drop(limit.admit().unwrap());
        }
        let e = limit.admit().map(|_| ()).unwrap_err();
        assert!(e.kind == ApiErrorKind::TooManyRequests && e.message.contains("in the last minute"), "{e:?}");
    }
}
