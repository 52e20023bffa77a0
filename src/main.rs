fn main() -> std::process::ExitCode {
    shisa::cli::run()
}
