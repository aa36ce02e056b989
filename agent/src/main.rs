//! `swarmseal` binary: parse, run, map the error to an exit code.
fn main() -> std::process::ExitCode {
    swarmseal::cli::main()
}
