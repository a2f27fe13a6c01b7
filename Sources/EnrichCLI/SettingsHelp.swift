import ArgumentParser
import EnrichSettings

/// Renders settings for `--help` and as the README's configuration table (`enrich settings`).
enum SettingsHelp {
    /// The SETTINGS section of `enrich run --help`: one entry per setting, by group, wrapped to 78 columns
    /// (ArgumentParser would wrap longer lines without indenting them).
    static func text(for settings: [any AnySetting]) -> String {
        var lines = ["SETTINGS (flag > environment variable > job file > default):"]
        for group in SettingGroup.allCases {
            let members = settings.filter { $0.group == group }
            guard !members.isEmpty else { continue }
            lines.append("  \(group.rawValue):")
            for setting in members {
                let usage =
                    setting.hasFlag ? setting.flag + (setting.isBoolean ? "" : " <\(setting.valueName)>") : "(no flag)"
                var details = "env \(setting.environment)"
                if setting.inJobFiles { details += ", job key \(setting.name)" }
                if setting.defaultText != "—" { details += "; default \(setting.defaultText)" }
                lines.append("    \(usage)")
                lines += wrap("\(setting.help) (\(details)).", width: 78, indent: "        ")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// `text` in lines of at most `width` columns, each starting with `indent`.
    static func wrap(_ text: String, width: Int, indent: String) -> [String] {
        var lines: [String] = []
        var line = indent
        for word in text.split(separator: " ") {
            if line.count > indent.count && line.count + 1 + word.count > width {
                lines.append(line)
                line = indent
            }
            line += (line.count > indent.count ? " " : "") + word
        }
        if line.count > indent.count { lines.append(line) }
        return lines
    }

    /// The README's configuration table, in Markdown.
    static func markdown(for settings: [any AnySetting]) -> String {
        var lines = [
            "| flag | environment | job file | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for setting in settings {
            let flag = setting.hasFlag ? "`\(setting.flag)`" : "—"
            let job = setting.inJobFiles ? "`\(setting.name)`" : "—"
            lines.append(
                "| \(flag) | `\(setting.environment)` | \(job) | \(setting.defaultText) | \(setting.help) (\(setting.expectation)) |"
            )
        }
        return lines.joined(separator: "\n")
    }
}

/// `enrich settings`: every setting with its flag, environment variable, job-file key, default and help.
struct SettingsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "settings",
        abstract: "List every setting: flag, environment variable, job-file key, default, meaning.",
        discussion: "With --markdown it prints the tables README.md shows (a test checks that they agree)."
    )

    @Flag(help: "Print a Markdown table.")
    var markdown = false

    @Flag(help: "The settings of enrich simulate instead of enrich run's.")
    var simulator = false

    func run() {
        let settings = simulator ? Settings.Simulator.all : Settings.all
        print(markdown ? SettingsHelp.markdown(for: settings) : SettingsHelp.text(for: settings))
    }
}
