import Foundation

/// Where settings are read from, in precedence order: flags, then the environment, then a job file, then
/// each setting's default. Every value keeps where it came from, for error messages.
///
/// Environment variables follow the `NAME_FILE` convention for secrets: when `NAME` is unset (or empty),
/// `NAME_FILE` names a file holding the value (trailing newline removed), so a password can live in a
/// root-only file or a container secret instead of a crontab or compose file.
public struct SettingSources: Sendable {
    /// Flag values by setting name (`"true"` for a boolean flag given without a value).
    public var flags: [String: String]
    public var environment: Environment
    /// A job file's values by key, and the file's path.
    public var jobFile: (path: String, values: [String: String])?

    public init(
        flags: [String: String] = [:],
        environment: Environment = Environment(),
        jobFile: (path: String, values: [String: String])? = nil
    ) {
        self.flags = flags
        self.environment = environment
        self.jobFile = jobFile
    }

    /// The setting's value and where it came from; nil when it is given nowhere (the caller's default
    /// applies). Throws when the value found does not fit, naming its origin.
    public func value<Value>(_ setting: Setting<Value>) throws(SettingError) -> Value? {
        guard let (text, origin) = try raw(setting) else { return nil }
        return try setting.parse(text, from: origin)
    }

    /// Checks every value given for `settings`, wherever it comes from.
    public func check(_ settings: [any AnySetting]) throws(SettingError) {
        for setting in settings {
            guard let (text, origin) = try raw(setting) else { continue }
            if !setting.accepts(text.trimmingCharacters(in: .whitespaces)) {
                throw SettingError(
                    setting: setting.name,
                    origin: origin,
                    problem: "expected \(setting.expectation), got \"\(text.prefix(80))\""
                )
            }
        }
    }

    /// Where `setting`'s value comes from (the default when it is given nowhere).
    public func origin(of setting: any AnySetting) -> SettingOrigin {
        (try? raw(setting))??.1 ?? .defaultValue(setting.name)
    }

    private func raw(_ setting: any AnySetting) throws(SettingError) -> (String, SettingOrigin)? {
        if setting.hasFlag, let text = flags[setting.name] { return (text, .flag(setting.flag)) }
        if let (text, variable) = try environment.lookup(setting.environment, for: setting.name) {
            return (text, .environment(variable))
        }
        if setting.inJobFiles, let job = jobFile, let text = job.values[setting.name] {
            return (text, .jobFile(path: job.path, key: setting.name))
        }
        return nil
    }

    /// Reads `--name value`, `--name=value` and boolean `--name` for the given settings from command-line
    /// arguments. Throws on an unknown flag (suggesting the closest known one) or a missing value.
    public static func parseFlags(
        _ arguments: [String],
        allowed: [any AnySetting]
    ) throws(SettingError)
        -> [String: String]
    {
        let byName = Dictionary(uniqueKeysWithValues: allowed.filter(\.hasFlag).map { ($0.name, $0) })
        var flags: [String: String] = [:]
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("--"), argument.count > 2 else {
                throw SettingError(setting: argument, origin: .flag(argument), problem: "unexpected argument")
            }
            let body = argument.dropFirst(2)
            let name = String(body.prefix { $0 != "=" })
            let inline = body.contains("=") ? String(body.drop { $0 != "=" }.dropFirst()) : nil
            guard let setting = byName[name] else {
                let hint = suggestion(for: name, among: Array(byName.keys)).map { "; did you mean --\($0)?" } ?? ""
                throw SettingError(setting: name, origin: .flag("--\(name)"), problem: "unknown option\(hint)")
            }
            if setting.isBoolean {
                flags[name] = inline ?? "true"
                continue
            }
            if let inline {
                flags[name] = inline
            } else if index < arguments.count, !arguments[index].hasPrefix("--") {
                flags[name] = arguments[index]
                index += 1
            } else {
                throw SettingError(
                    setting: name,
                    origin: .flag(setting.flag),
                    problem: "needs a value (\(setting.expectation))"
                )
            }
        }
        return flags
    }

    /// The known name closest to `name` (a typo of one or two letters), if any.
    static func suggestion(for name: String, among names: [String]) -> String? {
        let best = names.map { ($0, editDistance(Array(name), Array($0))) }.min { $0.1 < $1.1 }
        return best.flatMap { $0.1 <= 2 ? $0.0 : nil }
    }

    /// Levenshtein distance: insertions, deletions and substitutions.
    private static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var previous = [Int](0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// The process environment, with the `NAME_FILE` convention.
public struct Environment: Sendable {
    public var values: [String: String]

    public init(_ values: [String: String] = ProcessInfo.processInfo.environment) {
        self.values = values
    }

    /// The value of `name`, or of the file named by `name_FILE`; nil when neither is set or both are empty.
    public func value(_ name: String) throws(SettingError) -> String? {
        try lookup(name, for: name)?.0
    }

    /// Parses `name` as `T` (an integer, a number ...), naming the variable when it does not parse.
    public func parsed<T: LosslessStringConvertible>(
        _ name: String,
        as type: T.Type = T.self
    ) throws(SettingError) -> T? {
        guard let raw = try value(name) else { return nil }
        guard let value = T(raw.trimmingCharacters(in: .whitespaces)) else {
            throw SettingError(setting: name, origin: .environment(name), problem: "'\(raw)' is not a valid \(T.self)")
        }
        return value
    }

    /// The value and the variable it came from (`NAME` or `NAME_FILE`).
    func lookup(_ name: String, for setting: String) throws(SettingError) -> (String, String)? {
        if let value = values[name], !value.isEmpty { return (value, name) }
        let fileVariable = name + "_FILE"
        guard let path = values[fileVariable], !path.isEmpty else { return nil }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8)
        else {
            throw SettingError(
                setting: setting,
                origin: .environment(fileVariable),
                problem: "names \(path), which cannot be read"
            )
        }
        let trimmed = text.trimmingCharacters(in: .newlines)
        return trimmed.isEmpty ? nil : (trimmed, fileVariable)
    }
}
