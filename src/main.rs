fn main() -> std::process::ExitCode {
    bullmq_warden::cli::main()
}
