import ArgumentParser
import Foundation

/// Reads configuration from the process environment, with the `NAME_FILE` convention for secrets:
/// when `NAME` is unset and `NAME_FILE` names a file, the file's content (trailing newline removed) is used,
/// so a password can live in a root-only file or a container secret instead of the crontab or compose file.
public struct Environment: Sendable {
    public var values: [String: String]

    public init(_ values: [String: String] = ProcessInfo.processInfo.environment) {
        self.values = values
    }

    /// The value of `name`, or of the file named by `name_FILE`; nil when neither is set or both are empty.
    public func value(_ name: String) throws(ConfigurationError) -> String? {
        if let value = values[name], !value.isEmpty { return value }
        guard let path = values[name + "_FILE"], !path.isEmpty else { return nil }
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8)
        else {
            throw ConfigurationError("\(name)_FILE names \(path), which cannot be read")
        }
        let trimmed = text.trimmingCharacters(in: .newlines)
        return trimmed.isEmpty ? nil : trimmed
    }

    /// Parses `name` as `T` (an integer, a number, a boolean ...), naming the variable when it does not parse.
    public func parsed<T: LosslessStringConvertible>(
        _ name: String,
        as type: T.Type = T.self
    ) throws(ConfigurationError)
        -> T?
    {
        guard let raw = try value(name) else { return nil }
        guard let value = T(raw.trimmingCharacters(in: .whitespaces)) else {
            throw ConfigurationError("environment variable \(name)='\(raw)' is not a valid \(T.self)")
        }
        return value
    }
}

extension Environment {
    /// A duration in seconds from `flag`, else from the variable `variable`; nil when neither is given.
    /// Throws a usage error naming the flag when it is not a finite number above zero (or zero, with
    /// `allowZero`).
    func seconds(_ flag: Double?, _ variable: String, _ name: String, allowZero: Bool = false) throws -> Duration? {
        guard let value = try flag ?? parsed(variable, as: Double.self) else { return nil }
        guard value.isFinite, allowZero ? value >= 0 : value > 0 else {
            throw ValidationError(
                "\(name) must be \(allowZero ? "zero or more" : "more than zero") seconds (got \(value))"
            )
        }
        return .seconds(value)
    }
}

/// A configuration value that is missing or malformed (flag, environment variable or file).
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
