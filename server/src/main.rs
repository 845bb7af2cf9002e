//! `countersign`: parse the command line, then serve or run a subcommand.

fn main() -> std::process::ExitCode {
    server::cli::main()
}
