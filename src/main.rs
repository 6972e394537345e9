// Runs before the Rust runtime's first allocation; see `memory`.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = bullmq_warden::tune_allocator;

fn main() -> std::process::ExitCode {
    bullmq_warden::main()
}
