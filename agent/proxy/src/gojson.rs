//! Read a request body the way the Docker engine does: Go's `encoding/json`
//! decoding into a struct (`json.NewDecoder(r.Body).Decode(&v)`, as dockerd
//! 20.10's routers do), so that what the proxy inspects is what the engine acts on.
//!
//! The rules reproduced (Go `encoding/json`, `decode.go` and `fold.go`):
//! - only the FIRST JSON value of the body is read; whatever follows it is
//!   ignored (`Decoder.Decode` does not look past the value);
//! - an object key matches a struct field exactly or case-insensitively, with
//!   Go's folding (`K` U+212A KELVIN SIGN folds to `k`, `ſ` U+017F LONG S to `s`);
//! - duplicate keys (in any spelling) are applied in order: a scalar or an
//!   array replaces the previous value (the last one wins), an object is
//!   decoded INTO the previous struct (members merge), and `null` leaves a
//!   non-pointer field as it was;
//! - strict JSON: no comments, no `NaN`, no trailing commas (serde_json's
//!   grammar, which is at least as strict as Go's; a body serde_json refuses
//!   is refused by the caller, never passed uninspected).
//!
//! Tokenizing is serde_json's; this module only keeps every object member in
//! order (duplicates included) and applies Go's lookup rules on top.
//!
//! [`GoValue::field`] is the rule for a Go STRUCT field (`Spec.EncryptionConfig`,
//! `HostConfig.Privileged`; an embedded struct's fields sit at the top level). A Go
//! MAP (`Labels`, `Options`) matches keys exactly: read its `Object` members
//! directly (the last duplicate wins there too).

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value with every object member kept, in body order.
#[derive(Debug, Clone, PartialEq)]
pub enum GoValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<GoValue>),
    /// All members as sent, duplicates included.
    Object(Vec<(String, GoValue)>),
}

/// Why a body cannot be read as Go would.
#[derive(Debug, thiserror::Error)]
pub enum GoJsonError {
    #[error("the body is not valid JSON ({0}); the request was not forwarded")]
    Syntax(String),
}

/// Parse the first JSON value of `body` (Go's `json.Decoder.Decode`: bytes after
/// it are not read) and return it with the offset just past it. An empty body is an
/// error (the engine answers "EOF" to it).
pub fn parse_first(body: &[u8]) -> Result<(GoValue, usize), GoJsonError> {
    let mut it = serde_json::Deserializer::from_slice(body).into_iter::<GoValue>();
    match it.next() {
        Some(Ok(v)) => Ok((v, it.byte_offset())),
        Some(Err(e)) => Err(GoJsonError::Syntax(e.to_string())),
        None => Err(GoJsonError::Syntax("the body is empty".into())),
    }
}

/// [`parse_first`] for a request body that must be exactly one JSON object: bytes after the
/// value (other than whitespace) are refused, as is any other value (dockerd 20.10 ignores
/// trailing bytes, a later engine may not: only a body that means the same to both passes).
pub fn parse_object(body: &[u8]) -> Result<GoValue, GoJsonError> {
    let (v, end) = parse_first(body)?;
    if !body[end..].iter().all(|b| b.is_ascii_whitespace()) {
        return Err(GoJsonError::Syntax("bytes follow the JSON value".into()));
    }
    if !matches!(v, GoValue::Object(_)) {
        return Err(GoJsonError::Syntax("not a JSON object".into()));
    }
    Ok(v)
}

/// Go's case folding for a key against an ASCII struct field name.
pub fn fold(c: char) -> char {
    match c {
        '\u{212A}' => 'k',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    }
}

/// Whether object key `key` selects struct field `field` (Go: exact, else case-folded).
pub fn key_matches(key: &str, field: &str) -> bool {
    key == field || key.chars().map(fold).eq(field.chars().map(fold))
}

impl GoValue {
    /// The value Go stores in struct field `name` after decoding this object:
    /// every member whose key matches, applied in order (see the module doc).
    /// `None`: absent, only `null`, or `self` is not an object.
    pub fn field(&self, name: &str) -> Option<GoValue> {
        let GoValue::Object(members) = self else { return None };
        let mut acc: Option<GoValue> = None;
        for (k, v) in members {
            if !key_matches(k, name) {
                continue;
            }
            acc = match (acc, v) {
                (acc, GoValue::Null) => acc,
                (Some(GoValue::Object(mut a)), GoValue::Object(b)) => {
                    a.extend(b.iter().cloned());
                    Some(GoValue::Object(a))
                }
                (_, v) => Some(v.clone()),
            };
        }
        acc
    }

    /// [`field`](Self::field) along a dotted path, e.g. `EncryptionConfig.AutoLockManagers`.
    pub fn path(&self, dotted: &str) -> Option<GoValue> {
        let mut cur = self.clone();
        for name in dotted.split('.') {
            cur = cur.field(name)?;
        }
        Some(cur)
    }

    /// A boolean field: `Ok(None)` when absent (Go leaves the zero value, false),
    /// `Err` when the value is not a boolean (the engine refuses such a body).
    pub fn bool_at(&self, dotted: &str) -> Result<Option<bool>, String> {
        match self.path(dotted) {
            None => Ok(None),
            Some(GoValue::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(format!("{dotted} is not a boolean")),
        }
    }

    /// A string field: `Ok(None)` when absent, `Err` when not a string.
    pub fn str_at(&self, dotted: &str) -> Result<Option<String>, String> {
        match self.path(dotted) {
            None => Ok(None),
            Some(GoValue::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{dotted} is not a string")),
        }
    }

    /// A plain JSON value of what Go would decode: keys lower-cased (folded),
    /// duplicates resolved, and zero values (`null`, `false`, `0`, `""`, `[]`,
    /// `{}`) dropped from objects, so that two specs compare equal exactly when
    /// they decode to the same Go value (`omitempty` on either side does not matter).
    pub fn canonical(&self) -> serde_json::Value {
        use serde_json::Value as V;
        match self {
            GoValue::Null => V::Null,
            GoValue::Bool(b) => V::Bool(*b),
            GoValue::Number(n) => V::Number(n.clone()),
            GoValue::String(s) => V::String(s.clone()),
            GoValue::Array(a) => V::Array(a.iter().map(GoValue::canonical).collect()),
            GoValue::Object(members) => {
                let mut out = serde_json::Map::new();
                let mut seen: Vec<String> = Vec::new();
                for (k, _) in members {
                    let folded: String = k.chars().map(fold).collect();
                    if seen.contains(&folded) {
                        continue;
                    }
                    seen.push(folded.clone());
                    let Some(v) = self.field(&folded) else { continue };
                    let c = v.canonical();
                    let zero = match &c {
                        V::Null => true,
                        V::Bool(b) => !b,
                        V::Number(n) => n.as_f64() == Some(0.0),
                        V::String(s) => s.is_empty(),
                        V::Array(a) => a.is_empty(),
                        V::Object(o) => o.is_empty(),
                    };
                    if !zero {
                        out.insert(folded, c);
                    }
                }
                V::Object(out)
            }
        }
    }

    /// Like [`canonical`](Self::canonical) for a plain `serde_json::Value` (e.g. the engine's own answer).
    pub fn from_json(v: &serde_json::Value) -> GoValue {
        use serde_json::Value as V;
        match v {
            V::Null => GoValue::Null,
            V::Bool(b) => GoValue::Bool(*b),
            V::Number(n) => GoValue::Number(n.clone()),
            V::String(s) => GoValue::String(s.clone()),
            V::Array(a) => GoValue::Array(a.iter().map(GoValue::from_json).collect()),
            V::Object(o) => GoValue::Object(o.iter().map(|(k, v)| (k.clone(), GoValue::from_json(v))).collect()),
        }
    }
}

struct GoVisitor;

impl<'de> Visitor<'de> for GoVisitor {
    type Value = GoValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }
    fn visit_none<E>(self) -> Result<GoValue, E> {
        Ok(GoValue::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<GoValue, E> {
        Ok(GoValue::Bool(b))
    }
    fn visit_u64<E>(self, n: u64) -> Result<GoValue, E> {
        Ok(GoValue::Number(n.into()))
    }
    fn visit_i64<E>(self, n: i64) -> Result<GoValue, E> {
        Ok(GoValue::Number(n.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<GoValue, E> {
        serde_json::Number::from_f64(n).map(GoValue::Number).ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, s: &str) -> Result<GoValue, E> {
        Ok(GoValue::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<GoValue, E> {
        Ok(GoValue::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GoValue, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element::<GoValue>()? {
            v.push(x);
        }
        Ok(GoValue::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoValue, A::Error> {
        let mut v = Vec::new();
        while let Some((k, x)) = map.next_entry::<String, GoValue>()? {
            v.push((k, x));
        }
        Ok(GoValue::Object(v))
    }
}

impl<'de> Deserialize<'de> for GoValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoValue, D::Error> {
        d.deserialize_any(GoVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn autolock(body: &str) -> Option<bool> {
        parse_first(body.as_bytes()).unwrap().0.bool_at("EncryptionConfig.AutoLockManagers").unwrap()
    }

    #[test]
    fn keys_fold_like_go() {
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":true}}"#), Some(true));
        assert_eq!(autolock(r#"{"encryptionconfig":{"autolockmanagers":false}}"#), Some(false));
        assert_eq!(autolock(r#"{"ENCRYPTIONCONFIG":{"AUTOLOCKMANAGERS":true}}"#), Some(true));
        // KELVIN SIGN and LONG S fold to k and s in Go.
        assert_eq!(autolock("{\"EncryptionConfig\":{\"AutoLoc\u{212A}Manager\u{017F}\":false}}"), Some(false));
        assert_eq!(autolock(r#"{"EncryptionConfig":{"Auto\u004cockManagers":false}}"#), Some(false), "escapes in keys");
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManager":true}}"#), None);
        assert_eq!(autolock(r#"{"Encryption_Config":{"AutoLockManagers":true}}"#), None);
    }

    #[test]
    fn duplicates_resolve_like_go() {
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":true,"AutoLockManagers":false}}"#), Some(false));
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":false,"autolockmanagers":true}}"#), Some(true));
        // Objects merge; null leaves a struct or a bool as it was.
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":true},"encryptionconfig":{}}"#), Some(true));
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":true},"EncryptionConfig":{"AutoLockManagers":false}}"#), Some(false));
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":true},"EncryptionConfig":null}"#), Some(true));
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":true,"AutoLockManagers":null}}"#), Some(true));
        let v = parse_first(br#"{"A":[1,2],"a":[3]}"#).unwrap().0;
        assert_eq!(v.field("A"), Some(GoValue::Array(vec![GoValue::Number(3.into())])), "arrays are replaced");
    }

    #[test]
    fn first_value_only_and_strict() {
        assert_eq!(autolock(r#"{"EncryptionConfig":{"AutoLockManagers":false}}{"EncryptionConfig":{"AutoLockManagers":true}}"#), Some(false));
        assert_eq!(autolock("  {\"EncryptionConfig\":{\"AutoLockManagers\":false}} garbage\u{0}"), Some(false));
        for bad in ["", "   ", "{", "{\"a\":1,}", "{/*c*/}", "{\"a\":NaN}", "\u{feff}{}", "{'a':1}"] {
            assert!(parse_first(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let v = parse_first(br#"{"EncryptionConfig":{"AutoLockManagers":"false"}}"#).unwrap().0;
        assert!(v.bool_at("EncryptionConfig.AutoLockManagers").is_err());
    }

    #[test]
    fn canonical_compares_decoded_values() {
        let a = parse_first(br#"{"externalcas":[{"URL":"https://x"}],"ForceRotate":0,"SigningCACert":""}"#).unwrap().0;
        let b = GoValue::from_json(&serde_json::json!({"ExternalCAs":[{"url":"https://x","Options":null}]}));
        assert_eq!(a.canonical(), b.canonical());
        let c = parse_first(br#"{"ExternalCAs":[{"URL":"https://y"}]}"#).unwrap().0;
        assert_ne!(a.canonical(), c.canonical());
    }
}
