//! TPM structures the verifier reads, parsed by hand (TPM 2.0 Part 2, big-endian): the quote's
//! TPMS_ATTEST (10.12.12), the AK's TPM2B_PUBLIC (12.2.5) and its TPMT_SIGNATURE (11.3.4),
//! checked with ring. Each parser refuses bytes after the structure's end.

use sha2::{Digest as _, Sha256};
use swarmseal_common::pcrpolicy::TPM_ALG_SHA256;

pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("{} is truncated", self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    pub(super) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    pub(super) fn u16le(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    pub(super) fn u32le(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    pub(super) fn u64le(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    /// A TPM2B: 2-byte size, then the bytes.
    pub(super) fn tpm2b(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// TPM_GENERATED_VALUE (Part 2, 6.2): only the TPM signs structures that start with it.
const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE (Part 2, 6.9).
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ECC_NIST_P256: u16 = 0x0003;

/// The parts of a TPMS_ATTEST of type quote that the verifier uses.
#[derive(Debug)]
pub struct QuoteInfo {
    /// extraData: the qualifyingData (nonce) the quote was made with.
    pub extra_data: Vec<u8>,
    /// The sha256 PCRs selected, ascending.
    pub pcrs: Vec<u8>,
    /// pcrDigest: SHA-256 of the selected PCR values in index order.
    pub pcr_digest: Vec<u8>,
}

/// Parse a TPMS_ATTEST (Part 2, 10.12.12) of type TPM_ST_ATTEST_QUOTE (TPMS_QUOTE_INFO, 10.12.4).
pub fn parse_attest(b: &[u8]) -> Result<QuoteInfo, String> {
    let mut r = Reader::new(b, "the TPMS_ATTEST");
    if r.u32()? != TPM_GENERATED {
        return Err("the TPMS_ATTEST does not start with TPM_GENERATED_VALUE: the TPM did not make it".into());
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err("the TPMS_ATTEST is not a quote (TPM_ST_ATTEST_QUOTE)".into());
    }
    r.tpm2b()?; // qualifiedSigner
    let extra_data = r.tpm2b()?.to_vec();
    r.take(8 + 4 + 4 + 1)?; // clockInfo: clock, resetCount, restartCount, safe
    r.take(8)?; // firmwareVersion
    let mut pcrs = Vec::new();
    for _ in 0..r.u32()? {
        let hash = r.u16()?;
        let size = r.u8()?;
        if size > 4 {
            return Err(format!("the quote's PCR selection is {size} bytes: more than the 32 PCRs a TPM has"));
        }
        let select = r.take(usize::from(size))?;
        if hash != TPM_ALG_SHA256 {
            return Err(format!("the quote selects PCRs of hash algorithm {hash:#06x}; only sha256 is verified"));
        }
        for (octet, bits) in select.iter().enumerate() {
            pcrs.extend((0..8).filter(|bit| bits & (1 << bit) != 0).map(|bit| (octet * 8 + bit) as u8));
        }
    }
    let pcr_digest = r.tpm2b()?.to_vec();
    if !r.b.is_empty() {
        return Err(format!("the TPMS_ATTEST has {} bytes after its end", r.b.len()));
    }
    Ok(QuoteInfo { extra_data, pcrs, pcr_digest })
}

/// The AK's public area: its Name and its P-256 point.
#[derive(Debug)]
pub struct AkPublic {
    /// TPM Name (Part 1, 16): 0x000B || SHA-256(TPMT_PUBLIC), 34 bytes.
    pub name: Vec<u8>,
    /// Uncompressed SEC1 point (0x04 || x || y).
    pub point: Vec<u8>,
    /// restricted, sign, fixedTPM: a key the TPM made and keeps, that signs only its own quotes.
    pub restricted_signing: bool,
}

/// Parse a TPM2B_PUBLIC (Part 2, 12.2.5) of an ECC P-256 ECDSA key.
pub fn parse_ak_public(b: &[u8]) -> Result<AkPublic, String> {
    let mut outer = Reader::new(b, "the AK's TPM2B_PUBLIC");
    let tpmt = outer.tpm2b()?;
    let mut r = Reader::new(tpmt, "the AK's TPMT_PUBLIC");
    if r.u16()? != TPM_ALG_ECC {
        return Err("the AK is not an ECC key (this verifier takes ECC P-256 AKs, as the agent makes them)".into());
    }
    if r.u16()? != TPM_ALG_SHA256 {
        return Err("the AK's nameAlg is not sha256".into());
    }
    let attributes = r.u32()?;
    r.tpm2b()?; // authPolicy
    if r.u16()? != TPM_ALG_NULL {
        r.take(4)?; // symmetric keyBits, mode (a restricted signing key has none)
    }
    if r.u16()? != TPM_ALG_ECDSA {
        return Err("the AK's scheme is not ECDSA".into());
    }
    r.u16()?; // the scheme's hash
    if r.u16()? != TPM_ECC_NIST_P256 {
        return Err("the AK's curve is not NIST P-256".into());
    }
    if r.u16()? != TPM_ALG_NULL {
        r.u16()?; // kdf hash
    }
    let (x, y) = (r.tpm2b()?, r.tpm2b()?);
    if x.len() != 32 || y.len() != 32 {
        return Err("the AK's point is not 32-byte coordinates".into());
    }
    if !r.b.is_empty() || !outer.b.is_empty() {
        return Err(format!("the AK's TPM2B_PUBLIC has {} bytes after its end", r.b.len() + outer.b.len()));
    }
    // fixedTPM (bit 1), restricted (bit 16), sign (bit 18): TPM 2.0 Part 2, 8.3 TPMA_OBJECT.
    let restricted_signing = attributes & (1 << 1) != 0 && attributes & (1 << 16) != 0 && attributes & (1 << 18) != 0;
    let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(tpmt));
    let mut point = vec![0x04];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(AkPublic { name, point, restricted_signing })
}

/// Whether the TPMT_SIGNATURE `sig` (Part 2, 11.3.4: ECDSA, SHA-256, r, s) is the AK's over `attest`.
pub fn verify_quote(ak: &AkPublic, attest: &[u8], sig: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(sig, "the TPMT_SIGNATURE");
    if r.u16()? != TPM_ALG_ECDSA || r.u16()? != TPM_ALG_SHA256 {
        return Err("the quote's signature is not ECDSA with SHA-256".into());
    }
    let (sr, ss) = (r.tpm2b()?, r.tpm2b()?);
    if !r.b.is_empty() {
        return Err(format!("the quote's TPMT_SIGNATURE has {} bytes after its end", r.b.len()));
    }
    let pad = |v: &[u8]| -> Result<Vec<u8>, String> {
        let v = &v[v.iter().position(|&x| x != 0).unwrap_or(v.len())..];
        if v.len() > 32 {
            return Err("an ECDSA P-256 half is longer than 32 bytes".into());
        }
        let mut out = vec![0u8; 32 - v.len()];
        out.extend_from_slice(v);
        Ok(out)
    };
    let mut fixed = pad(sr)?;
    fixed.extend(pad(ss)?);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &ak.point)
        .verify(attest, &fixed)
        .map_err(|_| "the quote's signature does not verify with the AK it came with: forged or altered".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TPM2B_PUBLIC of an ECC P-256 restricted signing key, as the agent's AK template makes it.
    fn ak_public(x: &[u8; 32], y: &[u8; 32]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(TPM_ALG_ECC.to_be_bytes());
        t.extend(TPM_ALG_SHA256.to_be_bytes());
        t.extend(0x0005_0072u32.to_be_bytes()); // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign
        t.extend(0u16.to_be_bytes()); // authPolicy
        t.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
        t.extend(TPM_ALG_ECDSA.to_be_bytes());
        t.extend(TPM_ALG_SHA256.to_be_bytes());
        t.extend(TPM_ECC_NIST_P256.to_be_bytes());
        t.extend(TPM_ALG_NULL.to_be_bytes()); // kdf
        for c in [x, y] {
            t.extend(32u16.to_be_bytes());
            t.extend(c);
        }
        let mut b = (t.len() as u16).to_be_bytes().to_vec();
        b.extend(t);
        b
    }

    #[test]
    fn bytes_after_the_ak_or_the_signature_are_refused() {
        let ak = ak_public(&[1; 32], &[2; 32]);
        let parsed = parse_ak_public(&ak).unwrap();
        assert!(parsed.restricted_signing);
        assert_eq!(parsed.point.len(), 65);
        // One byte after the TPM2B, and one inside the TPMT_PUBLIC (its size grown to cover it).
        let mut after = ak.clone();
        after.push(0);
        assert!(parse_ak_public(&after).unwrap_err().contains("1 bytes after its end"));
        let mut inside = ak.clone();
        inside.push(0);
        let n = u16::from_be_bytes([inside[0], inside[1]]) + 1;
        inside[..2].copy_from_slice(&n.to_be_bytes());
        assert!(parse_ak_public(&inside).unwrap_err().contains("after its end"));
        assert!(parse_ak_public(&ak[..ak.len() - 1]).unwrap_err().contains("truncated"));
        // A TPMT_SIGNATURE with a byte after s: refused before any arithmetic.
        let mut sig = Vec::new();
        sig.extend(TPM_ALG_ECDSA.to_be_bytes());
        sig.extend(TPM_ALG_SHA256.to_be_bytes());
        for _ in 0..2 {
            sig.extend(32u16.to_be_bytes());
            sig.extend([3u8; 32]);
        }
        assert!(verify_quote(&parsed, b"attest", &sig).unwrap_err().contains("does not verify"));
        sig.push(0);
        assert!(verify_quote(&parsed, b"attest", &sig).unwrap_err().contains("after its end"));
    }
}
