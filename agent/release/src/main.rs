//! `swarmseal-release`: pack a release from a built image (`scripts/build-image --release`)
//! or verify one. Exit 0 on success, 1 when packing or verification failed, 2 on bad usage.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swarmseal_release::pack::{pack, PackOptions};
use swarmseal_release::{verify_dir, verify_tar, ReleaseKey};

#[derive(Parser)]
#[command(name = "swarmseal-release", about = "Pack or verify a swarmseal release (see docs/updates.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write OUT/V/{swarmseal_V.efi, swarmseal_V_<UUID>.root.raw.xz, swarmseal_V_<UUID>.root-verity.raw.xz,
    /// SHA256SUMS, SHA256SUMS.sig} and OUT/swarmseal_V.tar from a built disk image.
    Pack {
        /// The disk image holding the root and verity partitions labelled swarmseal_V.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// The signed UKI.
        #[arg(long, value_name = "FILE")]
        uki: PathBuf,
        /// The image version V.
        #[arg(long, value_name = "V")]
        version: String,
        /// The PCR-signing private key (PEM; used by `openssl dgst -sha256 -sign`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Its public key (PEM): the release is verified with it before it is archived.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Where the release directory and archive go.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The image's SBOM, carried beside the images and listed in SHA256SUMS.
        #[arg(long, value_name = "FILE")]
        sbom: Option<PathBuf>,
    },
    /// Check a release (its tar or its directory) with a public key: signature, names, hashes.
    Verify {
        /// The PCR-signing public key (PEM).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// swarmseal_V.tar, or a directory holding SHA256SUMS, SHA256SUMS.sig and the three files.
        #[arg(value_name = "RELEASE")]
        release: PathBuf,
    },
    /// Write the image's SBOM (CycloneDX 1.5 JSON, docs/sbom.md): the Debian packages installed
    /// under ROOT and the crates linked into the agent. Prints the counts on stderr.
    Sbom {
        /// The image tree (mkosi's $BUILDROOT): var/lib/dpkg/status, usr/share/doc/PKG/copyright.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// `cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu` of the workspace.
        #[arg(long, value_name = "FILE")]
        cargo_metadata: PathBuf,
        /// `cargo tree --locked -p swarmseal -e normal --target x86_64-unknown-linux-gnu
        /// --prefix none --format {p}`: the crates the agent's build links (features resolved
        /// as the build does; cargo metadata alone lists dev-only features' crates too).
        #[arg(long, value_name = "FILE")]
        cargo_tree: PathBuf,
        /// The workspace's Cargo.lock (the crates' checksums).
        #[arg(long, value_name = "FILE")]
        cargo_lock: PathBuf,
        /// The image version (IMAGE_VERSION).
        #[arg(long, value_name = "V")]
        image_version: Option<String>,
        /// The document's timestamp, Unix seconds.
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECS")]
        epoch: u64,
        /// Where the document goes (written atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swarmseal-release: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(c: Command) -> Result<String, Box<dyn std::error::Error>> {
    match c {
        Command::Sbom { root, cargo_metadata, cargo_tree, cargo_lock, image_version, epoch, out } => {
            use swarmseal_release::sbom;
            let debs = sbom::read_dpkg(&root)?;
            let (agent_version, crates) = sbom::read_crates(&cargo_metadata, &cargo_tree, &cargo_lock, "swarmseal")?;
            let doc = sbom::document(&sbom::Subject { image_version, agent_version, epoch }, &debs, &crates);
            swarmseal_common::fs::write_atomic(&out, &doc, 0o644).map_err(|e| format!("{}: {e}", out.display()))?;
            let licensed = debs.iter().filter(|d| !d.licenses.is_empty()).count();
            Ok(format!(
                "sbom {}: {} bytes, {} Debian packages ({licensed} with a DEP-5 license, {}%), {} agent crates",
                out.display(),
                doc.len(),
                debs.len(),
                (licensed * 100).checked_div(debs.len()).unwrap_or(0),
                crates.len()
            ))
        }
        Command::Pack { image, uki, version, key, public_key, out, sbom } => {
            let p = pack(&PackOptions { image, uki, version, private_key: key, public_key, out, sbom })?;
            Ok(format!("release {}: {}, {}", p.manifest.version, p.dir.display(), p.tar.display()))
        }
        Command::Verify { public_key, release } => {
            let key = ReleaseKey::load(&public_key)?;
            let m = if release.is_dir() {
                verify_dir(&key, &release)?
            } else {
                let f = std::fs::File::open(&release).map_err(swarmseal_release::io_err(&release))?;
                let rt = tokio::runtime::Builder::new_current_thread().build().map_err(swarmseal_release::io_err(&release))?;
                rt.block_on(verify_tar(&key, tokio::io::BufReader::with_capacity(256 << 10, tokio::fs::File::from_std(f))))?
            };
            Ok(format!("release {} verified: SHA256SUMS signed by {}, {} files match", m.version, public_key.display(), m.files.len()))
        }
    }
}
