//! The fixtures themselves work: a dockerd in its own namespace inits an
//! autolocked swarm, comes back locked after a restart; swtpm answers.
mod support;
use support::*;

#[test]
fn dockerd_autolock_restart_is_locked_and_swtpm_answers() {
    let tpm = Swtpm::start();
    assert_eq!(tpm.transient_handles(), 0);
    let mut d = Dockerd::start();
    let key = d.swarm_init_autolock();
    assert!(key.starts_with("SWMKEY-1-"));
    d.restart();
    assert_eq!(d.swarm_state(), "locked");
}
