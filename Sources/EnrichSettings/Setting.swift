import EnrichCore
import Foundation

/// One setting, described once: its name (the `--name` flag and the job-file key), its environment
/// variable, what its value must look like, its default and its help. Flags, `--help`, environment and
/// job-file parsing, validation, error messages and the README's configuration table all come from it.
public struct Setting<Value: Sendable>: AnySetting {
    public let name: String
    public let environment: String
    public let kind: SettingKind<Value>
    /// The default as people read it ("32", "adaptive", "off").
    public let defaultText: String
    public let help: String
    public let group: SettingGroup
    public let sources: SettingPlaces

    public init(
        _ name: String,
        environment: String,
        kind: SettingKind<Value>,
        default defaultText: String,
        help: String,
        group: SettingGroup,
        sources: SettingPlaces = .everywhere
    ) {
        self.name = name
        self.environment = environment
        self.kind = kind
        self.defaultText = defaultText
        self.help = help
        self.group = group
        self.sources = sources
    }

    public var expectation: String { kind.expectation }
    public var valueName: String { kind.valueName }
    public var isBoolean: Bool { kind.isBoolean }
    public var jsonType: SettingJSONType { kind.jsonType }
    public func accepts(_ text: String) -> Bool { kind.parse(text) != nil }

    /// Parses `text` as this setting's value, or says what is wrong with it.
    func parse(_ text: String, from origin: SettingOrigin) throws(SettingError) -> Value {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let value = kind.parse(trimmed) else {
            throw SettingError(
                setting: name,
                origin: origin,
                problem: "expected \(kind.expectation), got \(quoted(text))"
            )
        }
        return value
    }

    private func quoted(_ text: String) -> String {
        "\"" + text.prefix(80).replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

/// A setting of any value type: what help, tables and flag parsing need.
public protocol AnySetting: Sendable {
    var name: String { get }
    var environment: String { get }
    var defaultText: String { get }
    var help: String { get }
    var group: SettingGroup { get }
    var sources: SettingPlaces { get }
    /// What the value must look like ("a whole number from 1 to 4096").
    var expectation: String { get }
    /// The placeholder in `--name <value>`.
    var valueName: String { get }
    /// A flag without a value (`--follow`).
    var isBoolean: Bool { get }
    /// The JSON type a job file gives it as.
    var jsonType: SettingJSONType { get }
    /// Whether `text` is a valid value.
    func accepts(_ text: String) -> Bool
}

/// The JSON type of a setting's value in a job file.
public enum SettingJSONType: Sendable {
    case number, string, boolean
}

extension AnySetting {
    public var flag: String { "--" + name }
    public var hasFlag: Bool { sources.contains(.flag) }
    public var inJobFiles: Bool { sources.contains(.jobFile) }
}

/// Where a setting may be given.
public struct SettingPlaces: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    public static let flag = SettingPlaces(rawValue: 1)
    public static let jobFile = SettingPlaces(rawValue: 2)
    /// Flag, environment variable (always) and job file.
    public static let everywhere: SettingPlaces = [.flag, .jobFile]
    /// Flag and environment variable.
    public static let flagAndEnvironment: SettingPlaces = [.flag]
    /// The environment variable only (a secret, which must not show in a process list).
    public static let environmentOnly: SettingPlaces = []
}

/// The sections of `--help` and the README table.
public enum SettingGroup: String, Sendable, CaseIterable {
    case database = "Database"
    case logging = "Logging"
    case api = "API"
    case run = "Run"
    case output = "Output and monitoring"
    case job = "Jobs"
    case simulator = "Simulator"
}

/// Where a setting's value came from: what error messages name.
public enum SettingOrigin: Sendable, Equatable, CustomStringConvertible {
    case flag(String)
    case environment(String)
    case jobFile(path: String, key: String)
    case defaultValue(String)
    /// A required setting given nowhere.
    case missing

    public var description: String {
        switch self {
        case .flag(let flag): return flag
        case .environment(let variable): return "environment variable \(variable)"
        case .jobFile(let path, let key): return "\(path): \(key)"
        case .defaultValue(let name): return "the default of \(name)"
        case .missing: return "missing"
        }
    }
}

/// A value that does not fit its setting, naming where it came from.
public struct SettingError: Error, CustomStringConvertible, Sendable {
    public let setting: String
    public let origin: SettingOrigin
    public let problem: String

    public init(setting: String, origin: SettingOrigin, problem: String) {
        self.setting = setting
        self.origin = origin
        self.problem = problem
    }

    public var description: String { origin == .missing ? problem : "\(origin): \(problem)" }
}

/// What a setting's text must look like, and how it becomes a value.
public struct SettingKind<Value: Sendable>: Sendable {
    public let expectation: String
    public let valueName: String
    public let isBoolean: Bool
    public let jsonType: SettingJSONType
    let parse: @Sendable (String) -> Value?

    init(
        expectation: String,
        valueName: String,
        isBoolean: Bool = false,
        jsonType: SettingJSONType,
        parse: @escaping @Sendable (String) -> Value?
    ) {
        self.expectation = expectation
        self.valueName = valueName
        self.isBoolean = isBoolean
        self.jsonType = jsonType
        self.parse = parse
    }
}

extension SettingKind where Value == Int {
    /// A whole number in `range`.
    public static func count(_ range: ClosedRange<Int>, valueName: String = "n") -> Self {
        let expectation =
            range.upperBound == .max
            ? "a whole number of at least \(range.lowerBound)"
            : "a whole number from \(range.lowerBound) to \(range.upperBound)"
        return Self(expectation: expectation, valueName: valueName, jsonType: .number) { text in
            Int(text).flatMap { range.contains($0) ? $0 : nil }
        }
    }
}

extension SettingKind where Value == Int32 {
    /// A whole number of at least `minimum`.
    public static func count32(atLeast minimum: Int32) -> Self {
        Self(expectation: "a whole number of at least \(minimum)", valueName: "n", jsonType: .number) { text in
            Int32(text).flatMap { $0 >= minimum ? $0 : nil }
        }
    }
}

extension SettingKind where Value == Double {
    /// A number above zero, in `unit`.
    public static func positiveNumber(valueName: String) -> Self {
        Self(expectation: "a number above 0", valueName: valueName, jsonType: .number) { text in
            Double(text).flatMap { $0.isFinite && $0 > 0 ? $0 : nil }
        }
    }
}

extension SettingKind where Value == Duration {
    /// A number of seconds, above zero (or zero too).
    public static func seconds(allowZero: Bool = false) -> Self {
        Self(
            expectation: allowZero ? "a number of seconds, 0 or more" : "a number of seconds above 0",
            valueName: "seconds",
            jsonType: .number
        ) { text in
            guard let value = Double(text), value.isFinite, allowZero ? value >= 0 : value > 0 else { return nil }
            return .seconds(value)
        }
    }
}

extension SettingKind where Value == Duration {
    /// A duration as people write it: `26h`, `90m`, `1h30m`, `2d` or seconds (``DurationText``).
    public static var humanDuration: Self {
        Self(expectation: "a duration such as 26h, 90m, 1h30m or 3600", valueName: "duration", jsonType: .string) {
            DurationText.parse($0)
        }
    }
}

extension SettingKind where Value == String {
    /// Any non-empty text.
    public static func text(valueName: String) -> Self {
        Self(expectation: "a non-empty string", valueName: valueName, jsonType: .string) { $0.isEmpty ? nil : $0 }
    }

    /// One of `choices` (case-insensitive, given back lower-cased).
    public static func choice(_ choices: [String]) -> Self {
        Self(
            expectation: "one of " + choices.joined(separator: ", "),
            valueName: choices.joined(separator: "|"),
            jsonType: .string
        ) { text in
            choices.contains(text.lowercased()) ? text.lowercased() : nil
        }
    }
}

extension SettingKind where Value == String {
    /// A URL path: starts with `/`; printable ASCII without spaces, `?` or `#` (it goes into the request line).
    public static var urlPath: Self {
        Self(expectation: "a path starting with /, without spaces, ? or #", valueName: "path", jsonType: .string) {
            text in
            text.hasPrefix("/")
                && text.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "?") && $0 != UInt8(ascii: "#") }
                ? text : nil
        }
    }
}

extension SettingKind where Value == Bool {
    /// A flag without a value on the command line; `1`, `true`, `yes` (or `0`, `false`, `no`) elsewhere.
    public static var flag: Self {
        Self(expectation: "1, true or yes (0, false or no)", valueName: "", isBoolean: true, jsonType: .boolean) {
            text in
            switch text.lowercased() {
            case "1", "true", "yes": return true
            case "0", "false", "no": return false
            default: return nil
            }
        }
    }
}
