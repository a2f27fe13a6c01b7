import EnrichCLI

/// The process entry point; everything else lives in EnrichCLI so that it can be tested.
@main
struct EnrichMain {
    static func main() async {
        await EnrichCommand.main()
    }
}
