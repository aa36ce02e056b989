//! Load generator for `scripts/bench-proxy` (not a test): HTTP/1.1 GETs (or POSTs of one
//! JSON body) over
//! kept-alive connections, or one request per new connection, against the
//! engine's unix socket or a TLS endpoint with a client certificate.
//!
//! ```text
//! proxy-load (--unix PATH | --tls 127.0.0.1:PORT --ca F --cert F --key F)
//!            --path /_ping [--conns 4] [--requests 2000] [--new-conns]
//!            [--body FILE [--expect STATUS]]
//! ```
//! `--body`: POST the file as `application/json`; an answer counts as ok when it is a 2xx,
//! or exactly `--expect` (409 for a `containers/create` whose name is taken: the engine reads
//! the whole body and creates nothing).
//! Prints one line: `rps=… p50_ms=… p99_ms=… ok=… errors=…`. With
//! `--new-conns` every request opens a new connection (full TLS 1.3 handshake,
//! no resumption), so rps is the new-connection rate.
//!
//! ```text
//! proxy-load --flood N --from 127.0.0.2 --to 127.0.0.1:PORT --secs S
//! ```
//! holds N plain TCP connections from `--from` that never start TLS, re-opening each
//! as soon as the server closes it, for S seconds; prints `opened=…`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tls(SocketAddr, tokio_rustls::TlsConnector),
}

struct Args {
    target: Target,
    path: String,
    conns: usize,
    requests: usize,
    new_conns: bool,
    body: Option<Bytes>,
    expect: Option<u16>,
}

fn usage() -> ! {
    eprintln!("usage: proxy-load (--unix PATH | --tls ADDR --ca F --cert F --key F) --path P [--conns N] [--requests N] [--new-conns] [--body FILE [--expect STATUS]]");
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = std::env::args().skip(1);
    let (mut unix, mut tls, mut ca, mut cert, mut key) = (None, None, None, None, None);
    let (mut path, mut conns, mut requests, mut new_conns) = ("/_ping".to_string(), 4usize, 2000usize, false);
    let (mut body, mut expect) = (None, None);
    while let Some(k) = a.next() {
        let mut v = || a.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--unix" => unix = Some(PathBuf::from(v())),
            "--tls" => tls = Some(v().parse::<SocketAddr>().unwrap_or_else(|_| usage())),
            "--ca" => ca = Some(v()),
            "--cert" => cert = Some(v()),
            "--key" => key = Some(v()),
            "--path" => path = v(),
            "--conns" => conns = v().parse().unwrap_or_else(|_| usage()),
            "--requests" => requests = v().parse().unwrap_or_else(|_| usage()),
            "--new-conns" => new_conns = true,
            "--body" => body = Some(Bytes::from(std::fs::read(v()).unwrap_or_else(|_| usage()))),
            "--expect" => expect = Some(v().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let target = match (unix, tls) {
        (Some(p), None) => Target::Unix(p),
        (None, Some(addr)) => {
            let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else { usage() };
            let mut cfg = swarmseal_common::tls::client_config_from_files(swarmseal_common::tls::Versions::Tls13, std::path::Path::new(&ca), Some((std::path::Path::new(&cert), std::path::Path::new(&key)))).expect("client TLS configuration");
            // Measure full handshakes.
            cfg.resumption = rustls::client::Resumption::disabled();
            Target::Tls(addr, tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        }
        _ => usage(),
    };
    Args { target, path, conns: conns.max(1), requests: requests.max(1), new_conns, body, expect }
}

type Sender = SendRequest<Full<Bytes>>;

async fn open(t: &Target) -> std::io::Result<Sender> {
    let err = |e: hyper::Error| std::io::Error::other(e);
    match t {
        Target::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p).await?;
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.map_err(err)?;
            tokio::spawn(conn);
            Ok(tx)
        }
        Target::Tls(addr, c) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let s = c.connect(ServerName::try_from("localhost").unwrap(), s).await?;
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.map_err(err)?;
            tokio::spawn(conn);
            Ok(tx)
        }
    }
}

async fn get(tx: &mut Sender, path: &str, body: Option<&Bytes>, expect: Option<u16>) -> Result<(), String> {
    tx.ready().await.map_err(|e| e.to_string())?;
    let req = match body {
        Some(b) => Request::post(path).header("host", "localhost").header("content-type", "application/json").body(Full::new(b.clone())).unwrap(),
        None => Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap(),
    };
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status().is_success() || Some(resp.status().as_u16()) == expect;
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err("status".into())
    }
}

async fn worker(t: Target, path: String, n: usize, new_conns: bool, body: Option<Bytes>, expect: Option<u16>) -> (Vec<Duration>, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    let mut tx = None;
    for _ in 0..n {
        let t0 = Instant::now();
        let r = async {
            if new_conns || tx.is_none() {
                tx = Some(open(&t).await.map_err(|e| e.to_string())?);
            }
            get(tx.as_mut().unwrap(), &path, body.as_ref(), expect).await
        }
        .await;
        match r {
            Ok(()) => lat.push(t0.elapsed()),
            Err(_) => {
                errors += 1;
                tx = None;
            }
        }
        if new_conns {
            tx = None;
        }
    }
    (lat, errors)
}

/// `--flood N --from ADDR --to ADDR --secs S`, if given.
fn flood_args() -> Option<(usize, std::net::IpAddr, SocketAddr, Duration)> {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| v.iter().position(|a| a == k).and_then(|i| v.get(i + 1)).map(String::as_str);
    let n = get("--flood")?.parse().unwrap_or_else(|_| usage());
    let from = get("--from").and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let to = get("--to").and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let secs = get("--secs").and_then(|s| s.parse().ok()).unwrap_or(60);
    Some((n, from, to, Duration::from_secs(secs)))
}

async fn flood(n: usize, from: std::net::IpAddr, to: SocketAddr, secs: Duration) -> usize {
    let stop = Instant::now() + secs;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut opened = 0usize;
                while Instant::now() < stop {
                    let s = tokio::net::TcpSocket::new_v4().and_then(|s| s.bind(SocketAddr::new(from, 0)).map(|_| s));
                    let Ok(s) = s else { break };
                    match s.connect(to).await {
                        Ok(mut c) => {
                            opened += 1;
                            let mut b = [0u8; 64];
                            let _ = tokio::time::timeout(stop.saturating_duration_since(Instant::now()), tokio::io::AsyncReadExt::read(&mut c, &mut b)).await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                opened
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total
}

fn main() {
    if let Some((n, from, to, secs)) = flood_args() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        println!("opened={}", rt.block_on(flood(n, from, to, secs)));
        return;
    }
    let a = parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        // Warm-up (connections, engine caches).
        let warm: Vec<_> = (0..a.conns).map(|_| tokio::spawn(worker(a.target.clone(), a.path.clone(), 50, a.new_conns, a.body.clone(), a.expect))).collect();
        for w in warm {
            let _ = w.await;
        }
        let per = a.requests.div_ceil(a.conns);
        let t0 = Instant::now();
        let ws: Vec<_> = (0..a.conns).map(|_| tokio::spawn(worker(a.target.clone(), a.path.clone(), per, a.new_conns, a.body.clone(), a.expect))).collect();
        let mut lat = Vec::new();
        let mut errors = 0;
        for w in ws {
            let (l, e) = w.await.unwrap();
            lat.extend(l);
            errors += e;
        }
        let el = t0.elapsed();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
        };
        println!(
            "rps={:.0} p50_ms={:.3} p99_ms={:.3} ok={} errors={}",
            lat.len() as f64 / el.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            lat.len(),
            errors
        );
    });
}
