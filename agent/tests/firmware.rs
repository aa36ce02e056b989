//! The swarm unlock key through a firmware window (issue #19), against a real dockerd and a
//! real swtpm, in process (`swarmseal::boot`): arming seals a window copy bound to PCRs 2, 4,
//! 12, 15 + PCR 11 signed; a rotation while armed seals it again; after a PCR 7 change the boot
//! decision unlocks with it only for an `accepted` decision of this boot, reseals `current` to
//! the new PCR 7 and deletes the copy; any other decision leaves the swarm locked; a process
//! killed between the unlock and the reseal is finished by the next decision (only for a claim
//! marked unlocked); a hand unlock after the copy failed never reseals `current`; a failed
//! reseal after the window unlock is deferred; no copy in a boot that is not the sealed one; a
//! stale claim never consumes a new copy; every arming drops the earlier copy; a TPM that
//! stops during arming leaves `/var`'s window armed and says the copy failed.
//!
//! `/var`'s side (the root service's `arm` / `check`) is not run here (it needs LUKS and root's
//! socket; `firmware.rs`'s unit tests and QEMU scenario 13 cover it): its record and decision
//! files are written as it writes them.
mod support;

use support::*;
use swarmseal::boot::{boot_decision, Ctx};
use swarmseal::config::{Config, PolicyKind};
use swarmseal::firmware::{Outcome, Record, LAST, RECORD};
use swarmseal::keystore::{Slot, SlotFile, StoredPolicy};
use swarmseal::secret::UnlockKey;
use swarmseal::swarm::Engine;

/// A manager with the appliance's policy: PCRs 7, 12, 15 literal + PCR 11 signed.
struct Manager {
    d: Dockerd,
    tpm: Swtpm,
    key: FleetKey,
    state: tempfile::TempDir,
    run: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Manager {
    fn new() -> Manager {
        let m = Manager {
            d: Dockerd::start(),
            tpm: Swtpm::start(),
            key: FleetKey::ecc_p256(),
            state: tempfile::tempdir().unwrap(),
            run: tempfile::tempdir().unwrap(),
            rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
        };
        m.measure(0);
        m
    }

    /// The signature file systemd-stub leaves for this boot's PCR 11.
    fn sign_pcr11(&self) {
        let pcr11 = hex::decode(self.pcr(11)).unwrap();
        signature_file(self.run.path(), "tpm2-pcr-signature.json", vec![self.key.sign_pcr11(&pcr11)]);
    }

    /// What firmware, systemd-stub and systemd measure; `dbx`: PCR 7 after that many dbx
    /// updates (0: as armed; each another PCR 7).
    fn measure(&self, dbx: u8) {
        self.tpm.extend(2, "option roms");
        self.tpm.extend(4, "systemd-boot and the uki");
        self.tpm.extend(7, "secure boot: pk kek db dbx-v1");
        if dbx > 0 {
            self.tpm.extend(7, &format!("dbx-v{}", dbx + 1));
        }
        self.tpm.extend(11, "uki v1");
        self.tpm.extend(12, "command line");
        self.tpm.extend(15, "var volume key");
        self.sign_pcr11();
    }

    fn pcr(&self, n: u8) -> String {
        self.tpm.tpm2(&["pcrread", &format!("sha256:{n}")]).split("0x").nth(1).unwrap().trim().to_lowercase()
    }

    /// Reboot: TPM power cycle, the chain measured again, the engine back locked.
    fn reboot(&mut self, dbx: u8) {
        self.tpm.power_cycle();
        self.measure(dbx);
        self.d.restart();
    }

    fn ctx(&self) -> Ctx {
        let mut cfg = Config { state_dir: self.state.path().to_path_buf(), runtime_dir: self.run.path().join("swarmseal"), docker_host: self.d.host(), ..Default::default() };
        cfg.tpm.tcti = Some(self.tpm.tcti());
        cfg.tpm.policy = PolicyKind::Authorize;
        cfg.tpm.pcrs = vec![7, 12, 15];
        cfg.tpm.signed_pcrs = vec![11];
        cfg.tpm.pcr_public_key = self.key.public_pem();
        cfg.tpm.pcr_signature = self.run.path().join("tpm2-pcr-signature.json");
        Ctx::new(&cfg)
    }

    fn decide(&self) -> Result<String, swarmseal::boot::BootError> {
        self.decide_with(self.ctx())
    }

    /// The boot decision with `ctx` (a changed configuration).
    fn decide_with(&self, ctx: Ctx) -> Result<String, swarmseal::boot::BootError> {
        self.rt.block_on(async {
            let engine = Engine::connect(&ctx.cfg.docker_socket()).await.unwrap();
            boot_decision(&ctx, &engine).await
        })
    }

    fn slot(&self, s: Slot) -> Option<SlotFile> {
        self.ctx().ks.load(s).unwrap()
    }

    fn holds(&self, s: Slot, key: &str) -> bool {
        let k = UnlockKey::new(key.to_string()).unwrap();
        self.slot(s).is_some_and(|f| k.fingerprint(&f.salt()) == f.key_fingerprint)
    }

    /// The root service armed `/var`'s window (its record, as `arm` writes it).
    fn arm_var(&self) {
        let rec = Record { armed_at: 1, expires_at: u64::MAX / 2, pcr7: self.pcr(7), variables: Default::default(), dbx_entries: vec![], others: vec![] };
        std::fs::write(self.state.path().join(RECORD), serde_json::to_vec(&rec).unwrap()).unwrap();
    }

    /// `check` at this boot: its decision in the state dir (an accepted change also ends the record).
    fn decided(&self, o: &Outcome) {
        if matches!(o, Outcome::Accepted { .. }) {
            let _ = std::fs::remove_file(self.state.path().join(RECORD));
        }
        std::fs::write(self.state.path().join(LAST), serde_json::to_vec(o).unwrap()).unwrap();
    }

    /// The operator unlocks by hand (`docker swarm unlock` through the proxy) with `key`.
    fn unlock_by_hand(&self, key: &str) {
        let ctx = self.ctx();
        self.rt.block_on(async { Engine::connect(&ctx.cfg.docker_socket()).await.unwrap().unlock(&UnlockKey::new(key.to_string()).unwrap()).await.unwrap() });
        assert_eq!(self.d.swarm_state(), "active");
    }

    fn claim_path(&self) -> std::path::PathBuf {
        self.state.path().join("keys/window-claim.json")
    }

    fn seal_window_key(&self) -> Result<SlotFile, swarmseal::boot::BootError> {
        let ctx = self.ctx();
        self.rt.block_on(ctx.seal_window_key())
    }
}

fn accepted(boot_id: Option<String>) -> Outcome {
    Outcome::Accepted { at: 2, changed: "dbx changed (1 → 2 entries)".into(), boot_id }
}

fn literal_and_signed(f: &SlotFile) -> (Vec<String>, Vec<u8>) {
    match &f.policy {
        StoredPolicy::Authorize { pcrs, signed_pcrs, .. } => (pcrs.keys().cloned().collect(), signed_pcrs.clone()),
        p => panic!("not a signed policy: {p:?}"),
    }
}

/// Arm → the copy is bound to 2, 4, 12, 15 + 11 signed; rotate while armed → the copy holds the
/// new key; PCR 7 changes → another boot's decision or a refusal leave the swarm locked and the
/// copy untried; this boot's acceptance unlocks, reseals `current` to the new PCR 7 and deletes
/// the copy; the next boot unlocks from `current`.
#[test]
fn the_swarm_comes_back_unlocked_after_an_accepted_firmware_change_of_this_boot() {
    let mut m = Manager::new();
    let k0 = m.d.swarm_init_autolock();
    assert_eq!(m.decide().unwrap(), "swarm active; sealed key up to date", "the agent seals the key it finds");
    assert!(m.holds(Slot::Current, &k0));

    m.arm_var();
    let w = m.seal_window_key().unwrap();
    assert_eq!(literal_and_signed(&w), (vec!["12".into(), "15".into(), "2".into(), "4".into()], vec![11]), "the window copy binds PCRs 2, 4, 12, 15 + 11 signed, not PCR 7");
    assert!(m.holds(Slot::Window, &k0));
    let text = std::fs::read_to_string(m.ctx().ks.slot_path(Slot::Window)).unwrap();
    assert!(!text.contains(&k0), "the key is never on disk");
    assert_eq!(m.tpm.transient_handles(), 0, "sealing the copy left a TPM handle loaded");

    // A rotation while armed: the copy follows the new key.
    m.d.docker_ok(&["swarm", "unlock-key", "--rotate", "-q"]);
    let k1 = m.d.docker_ok(&["swarm", "unlock-key", "-q"]);
    assert_ne!(k0, k1);
    m.decide().unwrap();
    assert!(m.holds(Slot::Current, &k1) && m.holds(Slot::Window, &k1), "current and the window copy hold the rotated key");

    // The dbx update: PCR 7 moves.
    let pcr7_before = m.pcr(7);
    m.reboot(1);
    assert_ne!(m.pcr(7), pcr7_before);
    let this_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    for (what, o) in [("another boot's acceptance", accepted(Some("0e3c0ae4-66c4-4d8a-a2b1-5f2d9c4b1e77".into()))), ("an acceptance without a boot ID", accepted(None)), ("a refusal", Outcome::Refused { at: 2, why: "Secure Boot: off".into() })] {
        m.decided(&o);
        let e = m.decide().unwrap_err();
        assert!(e.to_string().contains("PCR 7"), "{what}: the refusal names PCR 7: {e}");
        assert_eq!(m.d.swarm_state(), "locked", "{what}: the swarm stays locked");
        assert!(m.holds(Slot::Window, &k1), "{what}: the window copy is left untried");
        assert!(!m.claim_path().exists(), "{what}: no claim is written for a copy left untried");
    }
    m.decided(&accepted(Some(this_boot)));
    let line = m.decide().unwrap();
    assert!(line.starts_with("swarm unlocked after the accepted firmware change (dbx changed"), "{line}");
    assert_eq!(m.d.swarm_state(), "active");
    let cur = m.slot(Slot::Current).unwrap();
    assert!(m.holds(Slot::Current, &k1));
    assert_eq!(cur.policy.literal_pcrs()["7"], m.pcr(7), "current is sealed to the new PCR 7");
    assert!(m.slot(Slot::Window).is_none(), "the window copy is gone");
    assert_eq!(m.tpm.transient_handles(), 0);

    // The next boot of the same chain: current unseals.
    m.reboot(1);
    assert_eq!(m.decide().unwrap(), "swarm unlocked with the sealed key (current slot)");
}

/// An agent killed after unlocking with the window copy but before `current` was resealed
/// (here: the claim, unseal and unlock done as the killed agent did them, `unseal_window_for`):
/// restarted in the same boot, the next decision reseals `current` to the new PCR 7 and only
/// then deletes the copy.
#[test]
fn a_decision_killed_between_the_window_unlock_and_the_reseal_is_finished_in_the_same_boot() {
    let (mut m, k0) = armed_then_dbx_updated();
    let this_boot = swarmseal::firmware::boot_id().unwrap();
    m.decided(&accepted(Some(this_boot.clone())));
    killed_after_the_window_unlock(&m, &this_boot);
    assert_ne!(m.slot(Slot::Current).unwrap().policy.literal_pcrs()["7"], m.pcr(7), "current still has the old PCR 7");
    m.decide().unwrap();
    assert!(m.holds(Slot::Current, &k0));
    assert_eq!(m.slot(Slot::Current).unwrap().policy.literal_pcrs()["7"], m.pcr(7), "current resealed to the new PCR 7");
    assert!(m.slot(Slot::Window).is_none(), "the copy is deleted once current is written");
    assert!(!m.state.path().join("keys/window-claim.json").exists(), "and its claim");
    m.reboot(1);
    assert_eq!(m.decide().unwrap(), "swarm unlocked with the sealed key (current slot)");
}

/// A manager whose key is sealed, a window armed with its copy, then rebooted after a dbx
/// update (PCR 7 moved); its key.
fn armed_then_dbx_updated() -> (Manager, String) {
    let mut m = Manager::new();
    let k0 = m.d.swarm_init_autolock();
    m.decide().unwrap();
    m.arm_var();
    m.seal_window_key().unwrap();
    m.reboot(1);
    (m, k0)
}

/// What a killed agent leaves: the copy claimed for the decision of boot `decided_in`,
/// unsealed, the swarm unlocked with it (the claim says so); `current` not resealed, the copy
/// still there.
fn killed_after_the_window_unlock(m: &Manager, decided_in: &str) {
    let ctx = m.ctx();
    m.rt.block_on(async {
        let key = ctx.unseal_window_for(decided_in).await.unwrap();
        Engine::connect(&ctx.cfg.docker_socket()).await.unwrap().unlock(&key).await.unwrap();
        ctx.window_unlocked().await.unwrap();
    });
    assert_eq!(m.d.swarm_state(), "active");
    assert!(m.slot(Slot::Window).is_some());
}

/// The boot of a decision other than this one (the test cannot change the kernel's boot ID).
const ANOTHER_BOOT: &str = "6b1d7c52-93a0-4e57-8f4e-2a9a3cb0d4e1";

/// [`armed_then_dbx_updated`], accepted by [`ANOTHER_BOOT`], which unlocked with the window
/// copy and was cut short before the reseal (its claim left, marked unlocked); its key.
fn cut_short_after_the_window_unlock() -> (Manager, String) {
    let (m, k0) = armed_then_dbx_updated();
    m.decided(&accepted(Some(ANOTHER_BOOT.into())));
    killed_after_the_window_unlock(&m, ANOTHER_BOOT);
    (m, k0)
}

/// The same, but the boot is cut short (power loss) before the reseal: its decision is now
/// another boot's. The next boot uses the copy only because that boot claimed it, and only at
/// the PCR 7 it claimed: at a third PCR 7 the swarm stays locked; at the claimed one it
/// unlocks, `current` is resealed and the copy deleted.
#[test]
fn a_boot_cut_short_after_the_window_unlock_is_finished_by_the_next_at_the_same_pcr7_only() {
    let (mut m, k0) = cut_short_after_the_window_unlock();
    let claimed7 = m.pcr(7);
    m.reboot(2);
    assert_ne!(m.pcr(7), claimed7);
    let e = m.decide().unwrap_err();
    assert!(e.to_string().contains("PCR 7"), "{e}");
    assert_eq!(m.d.swarm_state(), "locked", "another PCR 7 than the claimed one: locked");
    assert!(m.slot(Slot::Window).is_some());
    m.reboot(1);
    let line = m.decide().unwrap();
    assert!(line.starts_with("swarm unlocked after the accepted firmware change"), "{line}");
    assert!(m.holds(Slot::Current, &k0));
    assert_eq!(m.slot(Slot::Current).unwrap().policy.literal_pcrs()["7"], claimed7);
    assert!(m.slot(Slot::Window).is_none());
    // Without a claim, the same stale decision grants nothing (the first test: another boot's
    // acceptance leaves the swarm locked).
}

/// A closed window whose copy this boot may not use (a decision of another boot, no claim):
/// once the swarm is unlocked by hand, the next decision deletes the copy (a key without PCR 7
/// must not linger); `current` is left to the operator's reseal, as after any hand unlock.
#[test]
fn an_unusable_window_copy_is_deleted_once_the_swarm_is_unlocked_by_hand() {
    let (m, k0) = armed_then_dbx_updated();
    m.decided(&accepted(Some(ANOTHER_BOOT.into())));
    assert!(m.decide().is_err());
    assert!(m.slot(Slot::Window).is_some(), "kept while the swarm is locked");
    let ctx = m.ctx();
    m.rt.block_on(async { Engine::connect(&ctx.cfg.docker_socket()).await.unwrap().unlock(&UnlockKey::new(k0.clone()).unwrap()).await.unwrap() });
    m.decide().unwrap();
    assert!(m.slot(Slot::Window).is_none(), "the unusable copy is deleted");
    assert!(m.holds(Slot::Current, &k0));
}

/// The TPM stops answering while the window is armed: the copy is not sealed, the error says
/// why, and `/var`'s window (its record) is left armed.
#[test]
fn a_tpm_that_stops_during_arming_leaves_var_armed_and_no_copy() {
    let mut m = Manager::new();
    m.d.swarm_init_autolock();
    m.decide().unwrap();
    m.arm_var();
    m.tpm.kill();
    let e = m.seal_window_key().unwrap_err();
    assert!(matches!(e, swarmseal::boot::BootError::Tpm(_)), "{e}");
    assert!(m.slot(Slot::Window).is_none(), "no window copy");
    assert!(swarmseal::firmware::record(m.state.path()).unwrap().is_some(), "/var's window stays armed");
}

/// The window copy fails to unseal after an accepted change of this boot (PCR 12 differs: an
/// ESP addon): the decision returns the window's error (PCR 12), not the earlier PCR 7 one.
/// The operator then unlocks by hand: the next decision does not reseal `current` on their
/// behalf (it stays at the old PCR 7: `seal_stale`), and deletes the useless copy and claim.
#[test]
fn a_hand_unlock_after_the_window_copy_failed_never_finishes_the_window() {
    let (m, k0) = armed_then_dbx_updated();
    m.tpm.extend(12, "an esp addon's command line");
    m.decided(&accepted(Some(swarmseal::firmware::boot_id().unwrap())));
    let old7 = m.slot(Slot::Current).unwrap().policy.literal_pcrs()["7"].clone();
    let e = m.decide().unwrap_err();
    assert!(e.to_string().contains("PCR 12") && !e.to_string().contains("PCR 7"), "the window copy's own refusal (PCR 12, it does not bind PCR 7) is returned: {e}");
    assert_eq!(m.d.swarm_state(), "locked");
    m.unlock_by_hand(&k0);
    let line = m.decide().unwrap();
    assert!(line.starts_with("swarm active; sealed key does not match this boot"), "the hand unlock gets the seal_stale path: {line}");
    assert_eq!(m.slot(Slot::Current).unwrap().policy.literal_pcrs()["7"], old7, "current is not resealed to this boot chain");
    assert!(m.slot(Slot::Window).is_none(), "the useless copy is deleted");
    assert!(!m.claim_path().exists(), "and its claim");
}

/// The window copy unlocks, but the reseal of `current` fails (here: the PCR signing public key
/// is unreadable, so the signed policy is refused): the decision is still Ok (the unlock is
/// consumed) and says the reseal is deferred; the watch loop's next decision reseals `current`
/// to the new PCR 7 and deletes the copy.
#[test]
fn a_failed_reseal_after_the_window_unlock_is_deferred_to_the_watch_loop() {
    let (m, k0) = armed_then_dbx_updated();
    m.decided(&accepted(Some(swarmseal::firmware::boot_id().unwrap())));
    let mut ctx = m.ctx();
    ctx.cfg.tpm.pcr_public_key = m.run.path().join("no-such-key.pem");
    let line = m.decide_with(ctx).expect("the unlock with the window copy is an outcome");
    assert!(line.contains("resealing to the new PCR 7 deferred"), "{line}");
    assert_eq!(m.d.swarm_state(), "active");
    assert!(m.slot(Slot::Window).is_some(), "the copy stays until current is resealed");
    assert_eq!(m.decide().unwrap(), "swarm active; sealed key up to date");
    assert!(m.holds(Slot::Current, &k0));
    assert_eq!(m.slot(Slot::Current).unwrap().policy.literal_pcrs()["7"], m.pcr(7), "current resealed to the new PCR 7");
    assert!(m.slot(Slot::Window).is_none() && !m.claim_path().exists());
}

/// Arming in a boot that is not the sealed one (unlocked by hand, PCR 12 differs from
/// `current`): the copy is refused, naming PCR 12 and "reseal first"; no copy is written.
#[test]
fn arming_in_a_boot_that_is_not_the_sealed_one_seals_no_copy() {
    let mut m = Manager::new();
    let k0 = m.d.swarm_init_autolock();
    m.decide().unwrap();
    m.tpm.power_cycle();
    m.measure(0);
    m.tpm.extend(12, "an esp addon's command line");
    m.d.restart();
    assert!(m.decide().is_err());
    m.unlock_by_hand(&k0);
    m.arm_var();
    let e = m.seal_window_key().unwrap_err();
    assert!(matches!(e, swarmseal::boot::BootError::WindowRefused { .. }), "{e}");
    let why = e.to_string();
    assert!(why.contains("PCR 12") && why.contains("Reseal first"), "{why}");
    assert!(m.slot(Slot::Window).is_none(), "no window copy");
}

/// A claim left by a boot cut short (copy A, unlocked at PCR 7 = P1) must not consume the
/// copy of a later arming (copy B): the new copy removes the claim, a window still armed is
/// never used, and a claim of another copy grants nothing.
#[test]
fn a_stale_claim_never_consumes_a_new_window_copy() {
    let (mut m, k0) = cut_short_after_the_window_unlock();
    let stale = std::fs::read(m.claim_path()).unwrap();
    // Another boot (PCR 7 = P2): the operator unlocks by hand, reseals, and arms again.
    m.reboot(2);
    assert!(m.decide().is_err());
    m.unlock_by_hand(&k0);
    m.rt.block_on(m.ctx().seal(&UnlockKey::new(k0.clone()).unwrap())).unwrap();
    m.arm_var();
    m.seal_window_key().unwrap();
    assert!(!m.claim_path().exists(), "a new copy removes the earlier claim");
    // Back at the stale claim's PCR 7 while the new window is armed: current does not unseal,
    // and the new copy is not used.
    m.reboot(1);
    assert!(m.decide().is_err());
    assert_eq!(m.d.swarm_state(), "locked", "an armed window's copy is never used");
    assert!(m.slot(Slot::Window).is_some());
    // The stale claim back, the window closed without a decision of this boot: still locked.
    std::fs::write(m.claim_path(), &stale).unwrap();
    std::fs::remove_file(m.state.path().join(RECORD)).unwrap();
    assert!(m.decide().is_err());
    assert_eq!(m.d.swarm_state(), "locked", "a claim of another copy grants nothing");
}

/// Arming again while the swarm is locked: the earlier copy and its claim are deleted before
/// anything else, so no older copy survives an arming that could not seal one.
#[test]
fn arming_when_the_swarm_is_locked_drops_the_earlier_copy() {
    let (m, _k0) = armed_then_dbx_updated();
    m.decided(&accepted(Some(ANOTHER_BOOT.into())));
    std::fs::write(m.claim_path(), b"{}").unwrap();
    assert_eq!(m.d.swarm_state(), "locked");
    m.arm_var();
    let e = m.seal_window_key().unwrap_err();
    assert!(matches!(e, swarmseal::boot::BootError::State { .. } | swarmseal::boot::BootError::Swarm(_)), "{e}");
    assert!(m.slot(Slot::Window).is_none(), "the earlier copy is deleted");
    assert!(!m.claim_path().exists(), "and its claim");
}
