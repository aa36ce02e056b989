//! The proxy's errors, and the one place where an error becomes an HTTP status
//! ([`ApiErrorKind::status`]): the agent's endpoints and the proxy's own refusals both
//! answer with an [`ApiError`]; what the statuses mean to a client: `docs/proxy.md`, "Errors and limits".

use std::net::SocketAddr;
use std::path::PathBuf;

/// Setting up the listener or the PKI failed; `Display` is the operator's sentence (which
/// file, what to do). The binary decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A certificate, key or htpasswd file cannot be read; `hint` says how to create it.
    #[error("cannot read {what} {}: {source}{hint}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error, hint: &'static str },
    /// A PKI file or directory cannot be written.
    #[error("cannot {action} {}: {source}", path.display())]
    Write { action: &'static str, path: PathBuf, source: std::io::Error },
    /// A certificate or key file holds something unusable.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// `[proxy] client_ca` is not a CA certificate (a client certificate as trust anchor would
    /// let its holder mint `OU=admin` certificates).
    #[error("{}: not a CA certificate (basicConstraints CA:TRUE missing); point [proxy] client_ca at the CA (ca.pem from `swarmseal certs init`), not at a client certificate", path.display())]
    NotCa { path: PathBuf },
    /// A line of the htpasswd file (1-based) is not a bcrypt entry.
    #[error("{}:{line}: {message}", path.display())]
    Htpasswd { path: PathBuf, line: usize, message: &'static str },
    /// The operator's request cannot be done as asked (`certs issue` name, role, `--san`, `--out`).
    #[error("{0}")]
    Usage(String),
    /// Key generation, signing or the TLS configuration failed.
    #[error("{0}")]
    Crypto(String),
    /// `[proxy] listen` cannot be bound (in use, no such address, privileged port).
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// What kind of refusal or failure an answer is; [`ApiErrorKind::status`] is its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 400: the request is malformed (body, query, path).
    BadRequest,
    /// 401: basic authentication required or wrong.
    Unauthorized,
    /// 403: the certificate's role may not do this.
    Forbidden,
    /// 404: no such endpoint or thing, or not available on this agent.
    NotFound,
    /// 405: the endpoint exists, not with this method.
    MethodNotAllowed,
    /// 409: the state forbids it now (swarm locked, another operation running, seal refused).
    Conflict,
    /// 413: the body is larger than accepted.
    PayloadTooLarge,
    /// 422: understood but refused (not signed, wrong key).
    Unprocessable,
    /// 429: too many failed attempts; retry later.
    TooManyRequests,
    /// 500: the agent failed.
    Internal,
    /// 502: the engine or a tool behind the agent failed.
    BadGateway,
    /// 503: a dependency is not there now (engine, TPM, apply service, a capacity cap).
    Unavailable,
    /// 504: a dependency did not answer in time.
    GatewayTimeout,
}

impl ApiErrorKind {
    /// Every kind.
    #[cfg(test)]
    const ALL: [ApiErrorKind; 13] = [
        ApiErrorKind::BadRequest,
        ApiErrorKind::Unauthorized,
        ApiErrorKind::Forbidden,
        ApiErrorKind::NotFound,
        ApiErrorKind::MethodNotAllowed,
        ApiErrorKind::Conflict,
        ApiErrorKind::PayloadTooLarge,
        ApiErrorKind::Unprocessable,
        ApiErrorKind::TooManyRequests,
        ApiErrorKind::Internal,
        ApiErrorKind::BadGateway,
        ApiErrorKind::Unavailable,
        ApiErrorKind::GatewayTimeout,
    ];

    /// The HTTP status (RFC 9110 §15) of this kind.
    pub fn status(self) -> u16 {
        match self {
            ApiErrorKind::BadRequest => 400,
            ApiErrorKind::Unauthorized => 401,
            ApiErrorKind::Forbidden => 403,
            ApiErrorKind::NotFound => 404,
            ApiErrorKind::MethodNotAllowed => 405,
            ApiErrorKind::Conflict => 409,
            ApiErrorKind::PayloadTooLarge => 413,
            ApiErrorKind::Unprocessable => 422,
            ApiErrorKind::TooManyRequests => 429,
            ApiErrorKind::Internal => 500,
            ApiErrorKind::BadGateway => 502,
            ApiErrorKind::Unavailable => 503,
            ApiErrorKind::GatewayTimeout => 504,
        }
    }
}

/// An error answer: its kind and the operator's sentence (sent as `{"message": …}`; never a
/// secret), and optionally further fields of the answer (`details`, a JSON object sent next to
/// `message`: what was done before the failure, e.g. an arming that took effect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub message: String,
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into(), details: None }
    }
    /// The same error with `details` sent next to `message` (a `message` among them is
    /// replaced by this error's).
    pub fn with_details(self, details: serde_json::Map<String, serde_json::Value>) -> ApiError {
        ApiError { details: Some(details), ..self }
    }
    /// The answer's JSON body: `details` (if any) and `message`.
    pub fn body(&self) -> serde_json::Value {
        let mut b = self.details.clone().unwrap_or_default();
        b.insert("message".into(), serde_json::Value::String(self.message.clone()));
        serde_json::Value::Object(b)
    }
    /// The HTTP status of this answer.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::NotFound, m)
    }
    pub fn bad_gateway(m: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::BadGateway, m)
    }
    pub fn too_large(m: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorKind::PayloadTooLarge, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct() {
        let mut seen: Vec<u16> = ApiErrorKind::ALL.iter().map(|k| k.status()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ApiErrorKind::ALL.len());
    }
}
