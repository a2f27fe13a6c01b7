import ArgumentParser
import EnrichQueue
import EnrichSettings
import Foundation

/// Writes a line to standard error.
func printError(_ text: String) {
    TerminalDisplay.standardError.log(text + "\n")
}

/// Maps an error to its documented exit code.
public func exitCode(for error: any Error) -> Int32 {
    switch error {
    case is InputError: return EnrichExitCode.badInput
    case is JobLockHeldError: return EnrichExitCode.overlap
    case let error as SettingError:
        switch error.origin {
        case .flag: return ExitCode.validationFailure.rawValue
        case .jobFile: return EnrichExitCode.badInput
        default: return EnrichExitCode.configuration
        }
    case let error as DatabaseError:
        if error.code == .badSource || error.code == .badTarget { return EnrichExitCode.badInput }
        if error.code == .cannotConnect || error.code == .invalidURL || error.code == .invalidSchemaName {
            return EnrichExitCode.configuration
        }
        return EnrichExitCode.failure
    default: return EnrichExitCode.failure
    }
}

/// Runs a subcommand body: prints any error as one `enrich: error: ...` line (descriptions are secret-free by
/// construction) and exits with the code the error maps to, or with the code `body` returns.
func reportingErrors(_ body: () async throws -> Int32) async throws {
    let code: Int32
    do {
        code = try await body()
    } catch let error as ExitCode {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch {
        printError("enrich: error: \(message(for: error))")
        throw ExitCode(exitCode(for: error))
    }
    if code != EnrichExitCode.success { throw ExitCode(code) }
}

/// The line printed for `error`: its (secret-free) description, with what the user should do where the
/// library only reports what happened.
func message(for error: any Error) -> String {
    if let error = error as? DatabaseError, error.code == .schemaNotMigrated {
        return "\(error). Run `enrich migrate` first."
    }
    return "\(error)"
}
