import NymbleAPI

/// Why a run stopped early, or could not start. Descriptions never contain a secret or a token.
public struct WorkerError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String { case invalidSetting, login, databaseUnavailable, abandoned, stalled }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// A configuration value is out of range.
        public static let invalidSetting = Code(.invalidSetting)
        /// The API refused the credentials, or login kept failing: no call can succeed.
        public static let login = Code(.login)
        /// The database stayed unreachable longer than the configured outage limit.
        public static let databaseUnavailable = Code(.databaseUnavailable)
        /// Another runner found this run's heartbeat stale and marked it abandoned: it stops, so that two runs
        /// of a job never overlap.
        public static let abandoned = Code(.abandoned)
        /// The run held rows but completed none for the stall timeout while the database and the API
        /// answered: something inside it is stuck; it stops so that its rows go to another run.
        public static let stalled = Code(.stalled)
        public var description: String { base.rawValue }
    }

    public let code: Code
    public let message: String
    /// For `invalidSetting`: the setting's name (`heartbeat`), for the command line to say where it came from.
    public let setting: String?

    public init(_ code: Code, _ message: String, setting: String? = nil) {
        self.code = code
        self.message = message
        self.setting = setting
    }

    public var description: String { message }

    static func invalidSetting(_ setting: String, _ problem: String) -> WorkerError {
        WorkerError(.invalidSetting, "\(setting) \(problem)", setting: setting)
    }

    static func login(_ error: any Error) -> WorkerError {
        if let error = error as? NymbleAPIError, error.code == .invalidCredentials {
            return WorkerError(.login, "the API rejected the credentials (\(error)); no row was attempted with them")
        }
        return WorkerError(.login, "could not log in to the API: \(error)")
    }

    static func databaseUnavailable(
        server: String,
        for outage: Duration,
        limit: Duration,
        cause: String
    )
        -> WorkerError
    {
        WorkerError(
            .databaseUnavailable,
            "PostgreSQL at \(server) has been unreachable for \(Int(outage.inSeconds.rounded())) s (outage limit "
                + "\(Int(limit.inSeconds.rounded())) s): \(cause)"
        )
    }
}
