// mimalloc hands freed memory back to the system: after restoring 100,000
// schedulers the sidecar returns to its idle size instead of keeping the peak.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bullmq_warden::cli::main()
}
