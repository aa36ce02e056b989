//! CPU cost of the deploy role's body inspection (for `scripts/bench-proxy`, not a test):
//! `inspect-cost FILE [N]` runs [`swarmseal_proxy::policy::check_request`] (the proxy's own
//! checks: parse as Go does, duplicate keys, every rule) on the body in FILE as
//! `POST /v1.41/containers/create` for `deploy`, N times (default 20000), and prints
//! `p50_us=… p99_us=… verdict=allow|deny`.

use std::time::Instant;

use swarmseal_proxy::policy::{check_request, Roles, Verdict};

fn main() {
    let mut a = std::env::args().skip(1);
    let file = a.next().unwrap_or_else(|| {
        eprintln!("usage: inspect-cost FILE [N]");
        std::process::exit(2)
    });
    let n: usize = a.next().and_then(|s| s.parse().ok()).unwrap_or(20000);
    let body = std::fs::read(&file).expect("body file");
    let roles = Roles::builtin();
    let mut lat = Vec::with_capacity(n);
    let mut allowed = true;
    for _ in 0..n {
        let t0 = Instant::now();
        let v = check_request(&roles, "deploy", "POST", "/v1.41/containers/create?name=taken", std::hint::black_box(&body));
        lat.push(t0.elapsed());
        allowed = matches!(v, Verdict::Allow(_));
    }
    lat.sort();
    let us = |q: usize| lat[(lat.len() * q / 100).min(lat.len() - 1)].as_secs_f64() * 1e6;
    println!("p50_us={:.1} p99_us={:.1} verdict={}", us(50), us(99), if allowed { "allow" } else { "deny" });
}
