import EnrichCore
import EnrichQueue
import EnrichThrottle
import EnrichWorker
import Foundation
import NymbleAPI

/// The typed configurations of the libraries, from settings: one line per setting, each read with
/// ``SettingSources/value(_:)`` (flag > environment > job file > the configuration's own default).
extension SettingSources {
    public func databaseConfiguration() throws -> DatabaseConfiguration {
        guard let url = try value(Settings.databaseURL) else {
            throw SettingError(
                setting: Settings.databaseURL.name,
                origin: .missing,
                problem: "no database: set DATABASE_URL (or DATABASE_URL_FILE) or pass --database-url "
                    + "postgres://user@host/db"
            )
        }
        var configuration = try DatabaseConfiguration(
            url: url,
            schema: try value(Settings.schema) ?? "enrich",
            maximumConnections: try value(Settings.databaseConnections) ?? 8
        )
        if let timeout = try value(Settings.statementTimeout) { configuration.statementTimeout = timeout }
        if let prepared = try value(Settings.preparedStatements) { configuration.preparedStatements = prepared == "on" }
        return configuration
    }

    public func workerConfiguration() throws -> WorkerConfiguration {
        var worker = WorkerConfiguration()
        worker.follow = try value(Settings.follow) ?? worker.follow
        worker.concurrency = try value(Settings.concurrency) ?? worker.concurrency
        worker.rateLimit = try value(Settings.rate)
        worker.maxAttempts = try value(Settings.maxAttempts)
        worker.claimBatch = try value(Settings.claimBatch)
        worker.maxTakeovers = try value(Settings.maxTakeovers) ?? worker.maxTakeovers
        worker.lease = try value(Settings.lease) ?? worker.lease
        worker.heartbeatInterval = try value(Settings.heartbeat) ?? worker.heartbeatInterval
        worker.pollInterval = try value(Settings.pollInterval) ?? worker.pollInterval
        worker.shutdownGrace = try value(Settings.shutdownGrace) ?? worker.shutdownGrace
        worker.databaseOutageLimit = try value(Settings.databaseOutageLimit) ?? worker.databaseOutageLimit
        worker.staleAfter = try value(Settings.staleAfter) ?? worker.staleAfter
        worker.stallTimeout = try value(Settings.stallTimeout) ?? worker.stallTimeout
        let base = try value(Settings.retryBase) ?? worker.retryBackoff.base
        let cap = try value(Settings.retryCap) ?? worker.retryBackoff.cap
        guard cap >= base else {
            throw SettingError(
                setting: Settings.retryCap.name,
                origin: origin(of: Settings.retryCap),
                problem: "must be at least the retry base (\(DurationText.format(base)))"
            )
        }
        worker.retryBackoff = Backoff(base: base, cap: cap)
        worker.writeBatch = try value(Settings.writeBatch) ?? worker.writeBatch
        worker.maximumPause = try value(Settings.maxPause) ?? worker.maximumPause
        worker.jobName = try value(Settings.jobName) ?? worker.jobName
        worker.trigger = try value(Settings.trigger).flatMap(RunTrigger.init(rawValue:)) ?? worker.trigger
        do {
            try worker.validate()
        } catch {
            // Say where the offending value came from, in the words of the setting that holds it.
            let setting = Settings.all.first { $0.name == error.setting }
            throw SettingError(
                setting: error.setting ?? "",
                origin: setting.map(origin(of:)) ?? .missing,
                problem: error.message
            )
        }
        return worker
    }

    /// The API client's configuration (the profile: dialect, base URL, enrichment call); its HTTP pool is
    /// sized to `concurrency` (every task may hold a connection).
    public func clientConfiguration(concurrency: Int) throws -> NymbleClientConfiguration {
        var client = NymbleClientConfiguration()
        client.baseURL = try value(Settings.apiURL) ?? client.baseURL
        try Self.checkAPIURL(client.baseURL, origin: origin(of: Settings.apiURL))
        client.maximumConnections = concurrency
        client.requestTimeout = try value(Settings.requestTimeout) ?? client.requestTimeout
        client.dialect = try value(Settings.dialect).flatMap(APIDialect.init(rawValue:)) ?? client.dialect
        client.refreshPath = try value(Settings.refreshPath) ?? client.refreshPath
        if client.dialect != .nymble {
            // Nymble's defaults would send the password to Nymble's host, and a call with Nymble's names would
            // be refused as malformed (permanently, for every row): another dialect names its own.
            let required: [any AnySetting] = [
                Settings.apiURL, Settings.callPath, Settings.callOrganizationField, Settings.callUserField,
                Settings.answerCustomerNumber, Settings.answerPriceTier, Settings.answerCurrencyCode,
            ]
            let missing = required.filter { setting in
                if case .defaultValue = origin(of: setting) { return true }
                return false
            }.map(\.name)
            if let first = missing.first {
                throw SettingError(
                    setting: first,
                    origin: .missing,
                    problem: "the \(client.dialect) dialect has no built-in API profile: set "
                        + missing.joined(separator: ", ") + " (in the job file, as flags, or their variables)"
                )
            }
        }
        var call = client.call
        call.path = try value(Settings.callPath) ?? call.path
        call.method =
            try value(Settings.callMethod).flatMap { EnrichmentCall.Method(rawValue: $0.uppercased()) }
            ?? call.method
        call.organizationField = try value(Settings.callOrganizationField) ?? call.organizationField
        call.userField = try value(Settings.callUserField) ?? call.userField
        call.answer.customerNumber = try value(Settings.answerCustomerNumber) ?? call.answer.customerNumber
        call.answer.priceTier = try value(Settings.answerPriceTier) ?? call.answer.priceTier
        call.answer.currencyCode = try value(Settings.answerCurrencyCode) ?? call.answer.currencyCode
        let names: [(setting: any AnySetting, name: String)] = [
            (Settings.callOrganizationField, call.organizationField), (Settings.callUserField, call.userField),
            (Settings.answerCustomerNumber, call.answer.customerNumber),
            (Settings.answerPriceTier, call.answer.priceTier), (Settings.answerCurrencyCode, call.answer.currencyCode),
        ]
        // The second of a clashing pair: request names with request names, answer names with answer names.
        let clash = names.indices.first { index in
            let start = index < 2 ? 0 : 2
            return names[start..<index].contains { $0.name == names[index].name }
        }
        if let clash {
            let setting = names[clash].setting
            throw SettingError(
                setting: setting.name,
                origin: origin(of: setting),
                problem: "the call's two request names and three answer names must each be different"
            )
        }
        client.call = call
        return client
    }

    /// The credentials of the configured dialect.
    public func apiCredentials() throws -> APICredentials {
        let dialect = try value(Settings.dialect).flatMap(APIDialect.init(rawValue:)) ?? .nymble
        switch dialect {
        case .nymble:
            return .nymble(try credentials())
        case .b2b:
            guard let username = try value(Settings.username) else {
                throw SettingError(
                    setting: Settings.username.name,
                    origin: .missing,
                    problem: "no B2B username: set B2B_USERNAME, --username, or username in the job file"
                )
            }
            return .b2b(username: username, password: try password(for: dialect))
        case .achieveApex:
            guard let email = try value(Settings.email) else {
                throw SettingError(
                    setting: Settings.email.name,
                    origin: .missing,
                    problem: "no AchieveApex email: set APEX_EMAIL, --email, or email in the job file"
                )
            }
            return .achieveApex(email: email, password: try password(for: dialect))
        }
    }

    private func password(for dialect: APIDialect) throws -> String {
        guard let password = try value(Settings.password) else {
            throw SettingError(
                setting: Settings.password.name,
                origin: .missing,
                problem: "no \(dialect) password: set API_PASSWORD or API_PASSWORD_FILE"
            )
        }
        return password
    }

    /// Nymble's credentials.
    public func credentials() throws -> NymbleCredentials {
        guard let orgCode = try value(Settings.orgCode), let clientID = try value(Settings.clientID) else {
            throw SettingError(
                setting: Settings.orgCode.name,
                origin: .missing,
                problem: "no API credentials: set NYMBLE_ORG_CODE and NYMBLE_CLIENT_ID (or --org-code, --client-id)"
            )
        }
        guard let secret = try value(Settings.clientSecret) else {
            throw SettingError(
                setting: Settings.clientSecret.name,
                origin: .missing,
                problem: "no API secret: set NYMBLE_CLIENT_SECRET or NYMBLE_CLIENT_SECRET_FILE"
            )
        }
        return NymbleCredentials(orgCode: orgCode, clientId: clientID, clientSecret: secret)
    }

    /// A base URL the API client can use: http or https, with a host. Checked before anything is called,
    /// so that a typo is a configuration error at once, not a network error retried for seconds.
    static func checkAPIURL(_ text: String, origin: SettingOrigin) throws(SettingError) {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else {
            throw SettingError(
                setting: Settings.apiURL.name,
                origin: origin,
                problem: "'\(text)' is not an API base URL: expected http(s)://host[:port][/path], "
                    + "e.g. https://api.achievemomentum.com"
            )
        }
    }
}
