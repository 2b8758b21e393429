use std::process::ExitCode;

fn main() -> ExitCode {
    voipbin_tokend::cli::main()
}
