import EnrichSettings
import EnrichWorker
import Foundation
import Logging
import NymbleAPI
import Synchronization

/// Log output formats for `--log-format`.
public enum LogFormat: String, Sendable, CaseIterable {
    case text, json
}

/// Bootstraps swift-log once per process: text (human) or JSON lines (machines), both on standard error.
public enum LoggingSetup {
    private static let done = Mutex(false)

    /// Bootstraps logging at the level and in the format the settings give (flag > environment >
    /// default) and returns a logger.
    public static func makeLogger(label: String, sources: SettingSources) throws -> Logger {
        let level = Logger.Level(rawValue: try sources.value(Settings.logLevel) ?? "info") ?? .info
        let format = LogFormat(rawValue: try sources.value(Settings.logFormat) ?? "text") ?? .text
        bootstrap(format: format, level: level)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

    public static func bootstrap(format: LogFormat, level: Logger.Level) {
        let shouldBootstrap = done.withLock { done in
            defer { done = true }
            return !done
        }
        guard shouldBootstrap else { return }
        LoggingSystem.bootstrap(
            { label, provider in
                var handler = DisplayLogHandler(label: label, format: format, metadataProvider: provider)
                handler.logLevel = level
                return handler
            },
            metadataProvider: RunLogContext.metadataProvider
        )
    }
}

/// Log lines on standard error through ``TerminalDisplay`` (so they scroll above a live progress bar instead
/// of being written into it), one entry per line in either format:
/// - `text`, as swift-log's `StreamLogHandler` writes them: `2026-11-24T02:30:00Z notice enrich: key=value message`;
/// - `json`: one object with `ts`, `level`, `label`, `msg`, then the metadata keys.
public struct DisplayLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: LogFormat

    public init(label: String, format: LogFormat, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.format = format
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let keys = merged.keys.sorted()
        switch format {
        case .json:
            var line = "{\"ts\":\"\(Date().formatted(.iso8601))\",\"level\":\"\(event.level)\""
            line += ",\"label\":" + JSONText.quoted(label) + ",\"msg\":" + JSONText.quoted("\(event.message)")
            for key in keys { line += "," + JSONText.quoted(key) + ":" + JSONText.quoted("\(merged[key]!)") }
            TerminalDisplay.standardError.log(line + "}\n")
        case .text:
            let pairs = keys.map { "\($0)=\(merged[$0]!)" }.joined(separator: " ")
            let stamp = Date().formatted(
                .iso8601.year().month().day().time(includingFractionalSeconds: false)
                    .timeZone(separator: .omitted).timeSeparator(.colon).dateSeparator(.dash)
            )
            // A message or value holding a newline would break the one-line-per-entry promise.
            let text = "\(stamp) \(event.level) \(label):\(pairs.isEmpty ? "" : " " + pairs) \(event.message)"
            TerminalDisplay.standardError.log(text.replacingOccurrences(of: "\n", with: " ") + "\n")
        }
    }
}
