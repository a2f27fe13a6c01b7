import ArgumentParser
import EnrichQueue

/// The filters `enrich failures` and `enrich requeue` share: which failed rows they are about.
struct FailureFilterOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Only rows failed by this run (its id in `enrich status`).", valueName: "id"))
    var run: Int64?

    @Option(help: ArgumentHelp("Only rows of this OrganizationId.", valueName: "id"))
    var org: String?

    @Option(help: ArgumentHelp("Only rows whose reason contains this text (case-insensitive).", valueName: "text"))
    var reason: String?

    var filter: FailureFilter { FailureFilter(run: run, organization: org, reason: reason) }

    /// The filter in words, for the summary line ("" when none).
    var summary: String {
        var parts: [String] = []
        if let run { parts.append("run \(run)") }
        if let org { parts.append("organization \(org)") }
        if let reason { parts.append("reason containing \"\(reason)\"") }
        return parts.isEmpty ? "" : " (\(parts.joined(separator: ", ")))"
    }
}
