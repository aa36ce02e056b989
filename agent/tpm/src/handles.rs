//! Transient objects a previous process left in the TPM (TPM 2.0 Part 3, 30.2
//! TPM2_GetCapability TPM_CAP_HANDLES over the transient range, 28.4 TPM2_FlushContext).
//! Without a resource manager (swtpm, `device:/dev/tpm0`) a process killed mid-command (or a
//! connection lost between CreatePrimary and its flush) leaves its objects loaded, and a TPM
//! holds only a few (TPM_RC_OBJECT_MEMORY). The agent flushes them when it starts, before it
//! uses the TPM itself. Through the kernel's resource manager (`/dev/tpmrm0`) the list is this
//! connection's own, empty.

use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::constants::CapabilityType;
use tss_esapi::structures::CapabilityData;

use crate::context::Tpm;
use crate::error::{failed, TpmError};

/// More than any TPM holds at once (a few, TPM 2.0 Part 2 TPM_PT_HR_TRANSIENT_MIN is 3).
const MAX_TRANSIENT: u32 = 64;

impl Tpm {
    /// Flush every transient object loaded in the TPM; returns how many there were.
    /// Errors: the TPM does not answer, or refuses GetCapability or FlushContext.
    pub fn flush_transient_handles(&mut self) -> Result<usize, TpmError> {
        let (data, _more) = self
            .ctx
            .get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, MAX_TRANSIENT)
            .map_err(failed("TPM2_GetCapability(TPM_CAP_HANDLES)"))
            .map_err(|e| self.reached_through(e))?;
        let CapabilityData::Handles(handles) = data else {
            return Err(TpmError::Command { op: "TPM2_GetCapability(TPM_CAP_HANDLES)", message: "the TPM answered another capability".into() });
        };
        let handles = handles.into_inner();
        for h in &handles {
            let object = self.ctx.tr_from_tpm_public(*h).map_err(failed("Esys_TR_FromTPMPublic")).map_err(|e| self.reached_through(e))?;
            self.ctx.flush_context(object).map_err(failed("TPM2_FlushContext")).map_err(|e| self.reached_through(e))?;
        }
        Ok(handles.len())
    }
}
