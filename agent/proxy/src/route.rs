//! The agent's own endpoints under `/swarmseal/v1/`, parsed once from the canonical path
//! ([`Route::parse`]) and used by authorization ([`crate::authz::decide`],
//! [`crate::authz::key_events`]) and by the handler (module `forward`): the one list of them.
//! What each endpoint does: `docs/proxy.md`, "Agent endpoints".

use crate::authz::{Canon, KeyEvent};

/// One endpoint under `/swarmseal/v1/` (matched on the canonical path: version prefix removed,
/// lower-cased, percent-decoded; see [`crate::authz::canonicalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET|HEAD /swarmseal/v1/status`: the agent's status document (JSON).
    Status,
    /// `GET|HEAD /swarmseal/v1/bench`: the last CIS report (docker-bench-security JSON).
    Bench,
    /// `GET|HEAD /swarmseal/v1/metrics`: Prometheus text format 0.0.4
    /// ([`swarmseal_common::metrics`]).
    Metrics,
    /// `POST /swarmseal/v1/reseal`: seal the engine's current unlock key again.
    Reseal,
    /// `POST /swarmseal/v1/recover`: lost-quorum recovery (body: empty or the unlock key).
    Recover,
    /// `GET|HEAD /swarmseal/v1/escrow`: the age-encrypted unlock key.
    Escrow,
    /// `GET|HEAD /swarmseal/v1/escrow/var-recovery-key`: the age-encrypted `/var` recovery key.
    EscrowVarRecoveryKey,
    /// `/swarmseal/v1/escrow/<anything else>`: no such endpoint (404), but admin-only and a
    /// key-read event like its siblings, so probing names there is denied and logged.
    EscrowOther,
    /// `POST /swarmseal/v1/var/enroll-tpm`: bind `/var` to this TPM again (body: the recovery key).
    VarEnrollTpm,
    /// `POST /swarmseal/v1/var/firmware-window[?days=N]` (body: the recovery key) arms a firmware
    /// window; `?disarm=1` (no body) wipes it (docs/operating.md "Firmware and dbx updates").
    VarFirmwareWindow,
    /// `POST /swarmseal/v1/update[?version=V | ?resume=N&sums=HEX][&reboot=1]`: stage and
    /// install a signed release (uploaded, fetched, or the rest of an interrupted upload).
    Update,
    /// `GET|HEAD /swarmseal/v1/update/partial`: what is held of an interrupted upload.
    UpdatePartial,
    /// `GET|HEAD /swarmseal/v1/attest?nonce=HEX`: a TPM2_Quote with the nonce, the AK, the EK
    /// certificate and the event logs (docs/attestation.md).
    Attest,
    /// `POST /swarmseal/v1/attest/activate`, body `{"credential_blob", "secret"}` (base64):
    /// TPM2_ActivateCredential with the AK and the EK (docs/attestation.md).
    AttestActivate,
}

/// What a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    /// `GET` and `HEAD`.
    Read,
    /// `POST`.
    Post,
    /// None (a 404 whatever the method).
    None,
}

impl Route {
    /// Every endpoint, in the order the 404 answer lists them.
    pub const ALL: [Route; 14] = [
        Route::Status,
        Route::Bench,
        Route::Metrics,
        Route::Reseal,
        Route::Recover,
        Route::Escrow,
        Route::EscrowVarRecoveryKey,
        Route::EscrowOther,
        Route::VarEnrollTpm,
        Route::VarFirmwareWindow,
        Route::Update,
        Route::UpdatePartial,
        Route::Attest,
        Route::AttestActivate,
    ];

    /// The path below `/swarmseal/v1/` (`*`: any one segment).
    pub fn segments(self) -> &'static [&'static str] {
        match self {
            Route::Status => &["status"],
            Route::Bench => &["bench"],
            Route::Metrics => &["metrics"],
            Route::Reseal => &["reseal"],
            Route::Recover => &["recover"],
            Route::Escrow => &["escrow"],
            Route::EscrowVarRecoveryKey => &["escrow", "var-recovery-key"],
            Route::EscrowOther => &["escrow", "*"],
            Route::VarEnrollTpm => &["var", "enroll-tpm"],
            Route::VarFirmwareWindow => &["var", "firmware-window"],
            Route::Update => &["update"],
            Route::UpdatePartial => &["update", "partial"],
            Route::Attest => &["attest"],
            Route::AttestActivate => &["attest", "activate"],
        }
    }

    /// The route of a canonical path, if it is one of the agent's endpoints.
    pub fn parse(c: &Canon) -> Option<Route> {
        let rest = match c.segs.as_slice() {
            [a, b, rest @ ..] if a == "swarmseal" && b == "v1" => rest,
            _ => return None,
        };
        Route::ALL.into_iter().find(|r| {
            let p = r.segments();
            p.len() == rest.len() && rest.iter().zip(p).all(|(s, p)| *p == "*" || s == p)
        })
    }

    /// The methods this endpoint answers (others: 405).
    pub fn methods(self) -> Methods {
        match self {
            Route::Status | Route::Bench | Route::Metrics | Route::Escrow | Route::EscrowVarRecoveryKey | Route::UpdatePartial | Route::Attest => Methods::Read,
            Route::Reseal | Route::Recover | Route::VarEnrollTpm | Route::VarFirmwareWindow | Route::Update | Route::AttestActivate => Methods::Post,
            Route::EscrowOther => Methods::None,
        }
    }

    /// Whether `method` is one this endpoint answers.
    pub fn allows(self, method: &str) -> bool {
        match self.methods() {
            Methods::Read => method == "GET" || method == "HEAD",
            Methods::Post => method == "POST",
            Methods::None => false,
        }
    }

    /// Why a `readonly` certificate may not use this endpoint (`None`: it may).
    pub fn admin_only(self) -> Option<&'static str> {
        match self {
            // Attestation shows measurements, as status does: every role that reads status.
            Route::Status | Route::Bench | Route::Metrics | Route::Attest | Route::AttestActivate => None,
            Route::Escrow => Some("the escrowed key is admin-only"),
            Route::EscrowVarRecoveryKey | Route::EscrowOther => Some("the escrowed keys are admin-only"),
            Route::Reseal => Some("resealing is admin-only"),
            Route::Recover => Some("lost-quorum recovery is admin-only"),
            Route::VarEnrollTpm => Some("re-enrolling /var is admin-only"),
            Route::VarFirmwareWindow => Some("a firmware window is admin-only"),
            Route::Update | Route::UpdatePartial => Some("image updates are admin-only"),
        }
    }

    /// The security event a request to this endpoint is (whatever its method).
    pub fn event(self) -> Option<KeyEvent> {
        match self {
            Route::Status | Route::Bench | Route::Metrics | Route::Attest | Route::AttestActivate => None,
            Route::Escrow | Route::EscrowVarRecoveryKey | Route::EscrowOther => Some(KeyEvent::EscrowRead),
            Route::Reseal => Some(KeyEvent::Reseal),
            Route::Recover => Some(KeyEvent::Recover),
            Route::VarEnrollTpm => Some(KeyEvent::VarEnrollTpm),
            Route::VarFirmwareWindow => Some(KeyEvent::VarFirmwareWindow),
            Route::Update => Some(KeyEvent::ImageUpdate),
            // A look at the staging area: no key, no image changed.
            Route::UpdatePartial => None,
        }
    }

    /// The endpoints as the 404 answer names them (`status, bench, …, update`).
    pub fn listing() -> String {
        Route::ALL.iter().filter(|r| r.methods() != Methods::None).map(|r| r.segments().join("/")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::canonicalize;

    #[test]
    fn every_spelling_of_an_endpoint_parses_to_it() {
        let r = |p: &str| Route::parse(&canonicalize(p).unwrap());
        assert_eq!(r("/swarmseal/v1/status"), Some(Route::Status));
        assert_eq!(r("/v1.45/SwarmSeal/v1//%75pdate?reboot=1"), Some(Route::Update));
        assert_eq!(r("/swarmseal/v1/escrow/var-recovery-key"), Some(Route::EscrowVarRecoveryKey));
        assert_eq!(r("/swarmseal/v1/escrow/other"), Some(Route::EscrowOther));
        assert_eq!(r("/swarmseal/v1/var/enroll-tpm"), Some(Route::VarEnrollTpm));
        assert_eq!(r("/swarmseal/v1/update/Partial"), Some(Route::UpdatePartial));
        assert_eq!(r("/swarmseal/v1/update/partial/x"), None);
        assert_eq!(r("/swarmseal/v1/nope"), None);
        assert_eq!(r("/swarmseal/v2/status"), None);
        assert_eq!(r("/status"), None);
        for route in Route::ALL {
            let path = format!("/swarmseal/v1/{}", route.segments().join("/").replace('*', "x"));
            assert_eq!(r(&path), Some(route), "{path}");
        }
    }

    #[test]
    fn the_listing_names_the_endpoints_in_order() {
        assert_eq!(Route::listing(), "status, bench, metrics, reseal, recover, escrow, escrow/var-recovery-key, var/enroll-tpm, var/firmware-window, update, update/partial, attest, attest/activate");
    }
}
