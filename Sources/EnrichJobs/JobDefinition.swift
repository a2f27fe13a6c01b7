import EnrichQueue
import EnrichSettings
import Foundation

/// A job definition from `jobs/NAME.json`: where the pairs come from and the settings of its runs.
///
/// ```json
/// {
///   "description": "Nightly sync of every active membership",
///   "source": { "sql": "SELECT organization_id, user_id FROM app.memberships WHERE active" },
///   "target": { "sql": "UPDATE app.memberships AS m SET customer_number = t.c FROM unnest($1::text[], ...) ..." },
///   "concurrency": 32,
///   "max-attempts": 5
/// }
/// ```
///
/// The keys are the names of the settings that may stand in a job file (`Settings`, the same as their flags);
/// a flag or environment variable given at run time wins over the file (flag > environment > job file >
/// default). `source` is `"queue"` (drain the pairs already enqueued)
/// or `{"sql": "SELECT ..."}`, a query over the user's own tables returning two columns (organization id,
/// user id), run at the start of every run. `target` (optional) is `{"sql": "..."}`, the application's SQL
/// that receives each written batch of results (`WriteBackTarget`). An unknown key or a value of the wrong type is an
/// ``InputError`` naming the file and the key.
public struct JobDefinition: Sendable, Equatable {
    /// Where a run's pairs come from.
    public enum Source: Sendable, Equatable {
        /// The pairs already enqueued (by `enrich enqueue`, or by the user's own application).
        case queue
        /// A SELECT returning (organization id, user id), enqueued at the start of each run.
        case sql(String)
    }

    /// The job's name: the file name without `.json`. Runs are recorded and locked under it.
    public let name: String
    /// The file it was read from.
    public let path: String
    public let description: String?
    public let source: Source
    /// The write-back target's SQL (`target.sql`), if any.
    public let target: String?
    /// Run settings by name (`concurrency` ...), as text, already checked against their settings; layered
    /// under flags and the environment (``SettingSources``).
    public let settings: [String: String]

    /// The settings a job file may hold.
    static let settingsByKey = Dictionary(
        uniqueKeysWithValues: Settings.all.filter(\.inJobFiles).map { ($0.name, $0) }
    )

    /// Finds and reads a job: a path (containing `/` or ending in `.json`) or a name looked up as
    /// `directory/NAME.json`.
    public static func load(_ reference: String, directory: String) throws(InputError) -> JobDefinition {
        let path =
            reference.contains("/") || reference.hasSuffix(".json")
            ? reference : (directory as NSString).appendingPathComponent(reference + ".json")
        guard let data = FileManager.default.contents(atPath: path) else {
            let known =
                (try? FileManager.default.contentsOfDirectory(atPath: directory))?
                .filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted() ?? []
            let hint = known.isEmpty ? "" : " (jobs in \(directory): \(known.joined(separator: ", ")))"
            throw InputError(file: path, line: nil, problem: "job definition not found or unreadable\(hint)")
        }
        return try parse(data, path: path)
    }

    /// Parses a job definition read from `path` (the name comes from the file name).
    public static func parse(_ data: Data, path: String) throws(InputError) -> JobDefinition {
        let name = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        guard JobName.isValid(name) else {
            throw InputError(
                file: path,
                line: nil,
                problem: "the file name must be a job name: letters, digits, - and _ (got \(name))"
            )
        }
        let root: [String: JSONValue]
        do {
            guard case .object(let object) = try JSONDecoder().decode(JSONValue.self, from: data) else {
                throw InputError(file: path, line: nil, problem: "expected a JSON object at the top level")
            }
            root = object
        } catch let error as InputError {
            throw error
        } catch {
            throw Self.syntaxError(data, path: path, fallback: error)
        }

        var description: String?
        var source: Source?
        var target: String?
        var settings: [String: String] = [:]
        for key in root.keys.sorted() {
            let value = root[key]!
            func wrong(_ expectation: String) -> InputError {
                InputError(file: path, line: nil, field: key, problem: "expected \(expectation), got \(value.summary)")
            }
            switch key {
            case "description":
                guard case .string(let text) = value else { throw wrong("a string") }
                description = text
            case "source":
                source = try parseSource(value, path: path)
            case "target":
                target = try parseSQLObject(value, path: path, field: "target", expected: "a non-empty SQL statement")
            default:
                guard let setting = settingsByKey[key] else {
                    let known = (["description", "source", "target"] + settingsByKey.keys).sorted().joined(
                        separator: ", "
                    )
                    throw InputError(file: path, line: nil, field: key, problem: "unknown key (known keys: \(known))")
                }
                guard let text = value.text(as: setting.jsonType), setting.accepts(text) else {
                    throw wrong(setting.expectation)
                }
                settings[key] = text
            }
        }
        guard let source else {
            throw InputError(
                file: path,
                line: nil,
                field: "source",
                problem: "missing: give \"queue\" or {\"sql\": \"SELECT organization_id, user_id FROM ...\"}"
            )
        }
        return JobDefinition(
            name: name,
            path: path,
            description: description,
            source: source,
            target: target,
            settings: settings
        )
    }

    private static func parseSource(_ value: JSONValue, path: String) throws(InputError) -> Source {
        switch value {
        case .string("queue"):
            return .queue
        case .object:
            return .sql(try parseSQLObject(value, path: path, field: "source", expected: "a non-empty SELECT"))
        default:
            throw InputError(
                file: path,
                line: nil,
                field: "source",
                problem: "expected \"queue\" or {\"sql\": \"SELECT ...\"}, got \(value.summary)"
            )
        }
    }

    /// `{"sql": "..."}` under `field`: the SQL text.
    private static func parseSQLObject(
        _ value: JSONValue,
        path: String,
        field: String,
        expected: String
    ) throws(InputError) -> String {
        guard case .object(let object) = value else {
            throw InputError(
                file: path,
                line: nil,
                field: field,
                problem: "expected {\"sql\": \"...\"}, got \(value.summary)"
            )
        }
        for key in object.keys where key != "sql" {
            throw InputError(file: path, line: nil, field: "\(field).\(key)", problem: "unknown key (known: sql)")
        }
        guard case .string(let sql) = object["sql"], !sql.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
        else {
            throw InputError(file: path, line: nil, field: "\(field).sql", problem: "expected \(expected)")
        }
        return sql
    }

    /// Where the JSON breaks: JSONSerialization names the character offset; turn it into a line number.
    private static func syntaxError(_ data: Data, path: String, fallback: any Error) -> InputError {
        var detail = "\(fallback)"
        do {
            _ = try JSONSerialization.jsonObject(with: data)
        } catch {
            detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? detail
        }
        guard let range = detail.range(of: "character "),
            let offset = Int(detail[range.upperBound...].prefix { $0.isNumber })
        else {
            return InputError(file: path, line: nil, problem: "not valid JSON: \(detail)")
        }
        let before = data.prefix(offset)
        let line = before.reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
        let column = offset - (before.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0) + 1
        let reason = detail.replacingOccurrences(of: " around character \(offset)", with: "")
            .trimmingCharacters(in: CharacterSet(charactersIn: "."))
        return InputError(file: path, line: line, problem: "not valid JSON: \(reason) at column \(column)")
    }
}

/// Job names: what `enrich run --job` accepts and what runs are recorded and locked under.
public enum JobName {
    public static func isValid(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 100
            && name.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == "_" }
    }
}

/// Just enough of JSON to check a job file's types and name the wrong ones.
enum JSONValue: Decodable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        if let container = try? decoder.container(keyedBy: AnyKey.self) {
            var object: [String: JSONValue] = [:]
            for key in container.allKeys { object[key.stringValue] = try container.decode(JSONValue.self, forKey: key) }
            self = .object(object)
        } else if var container = try? decoder.unkeyedContainer() {
            var array: [JSONValue] = []
            while !container.isAtEnd { array.append(try container.decode(JSONValue.self)) }
            self = .array(array)
        } else {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self = .null
            } else if let bool = try? container.decode(Bool.self) {
                self = .bool(bool)
            } else if let number = try? container.decode(Double.self) {
                self = .number(number)
            } else {
                self = .string(try container.decode(String.self))
            }
        }
    }

    /// A short description for error messages.
    var summary: String {
        switch self {
        case .null: return "null"
        case .bool(let value): return "\(value)"
        case .number(let value): return value == value.rounded() && abs(value) < 1e15 ? "\(Int64(value))" : "\(value)"
        case .string(let value): return "the string \"\(value.prefix(60))\""
        case .array: return "a list"
        case .object: return "an object"
        }
    }

    /// The value as a setting's text, when it has the JSON type the setting takes.
    func text(as type: SettingJSONType) -> String? {
        switch (type, self) {
        case (.number, .number(let value)):
            return value == value.rounded() && abs(value) < 1e15 ? "\(Int64(value))" : "\(value)"
        case (.string, .string(let value)): return value
        case (.boolean, .bool(let value)): return value ? "true" : "false"
        default: return nil
        }
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
