import Crypto
import Foundation

/// Seals the shared token for storage in PostgreSQL: AES-GCM under a key derived (HKDF-SHA256) from the
/// ClientSecret and the credentials' key, so that a reader of the database without the secret can neither
/// use nor forge a token, and a token sealed for other credentials does not open. Also fingerprints the
/// secret (an HMAC under the derived key) so that a refusal of the credentials can be told apart from a
/// refusal of an earlier secret, without storing anything the secret could be recovered from.
public struct TokenSeal: Sendable {
    private let key: SymmetricKey
    private let context: Data
    /// Identifies the secret (not reversible), for ``FleetCredentials/recordRefusal(fingerprint:message:)``.
    public let fingerprint: String

    public init(secret: String, credentialsKey: String) {
        context = Data(credentialsKey.utf8)
        key = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: Data(secret.utf8)),
            salt: Data("enrich shared token v1".utf8),
            info: context,
            outputByteCount: 32
        )
        let code = HMAC<SHA256>.authenticationCode(for: Data("refused secret".utf8) + context, using: key)
        fingerprint = Data(code).map { String(format: "%02x", $0) }.joined()
    }

    public func seal(_ token: String) throws -> [UInt8] {
        guard let combined = try AES.GCM.seal(Data(token.utf8), using: key, authenticating: context).combined else {
            throw CryptoKitError.incorrectParameterSize
        }
        return Array(combined)
    }

    /// The token, or nil when `sealed` was not sealed with this secret for these credentials.
    public func open(_ sealed: [UInt8]) -> String? {
        guard let box = try? AES.GCM.SealedBox(combined: Data(sealed)),
            let plain = try? AES.GCM.open(box, using: key, authenticating: context)
        else { return nil }
        return String(decoding: plain, as: UTF8.self)
    }

    /// The key of the credentials row for Nymble credentials: SHA-256 of the base URL, OrgCode and ClientId.
    public static func credentialsKey(baseURL: String, orgCode: String, clientId: String) -> String {
        credentialsKey(baseURL: baseURL, identity: "\(orgCode)\n\(clientId)")
    }

    /// The key of the credentials row for an API identity (`APICredentials.identity`, never the
    /// secret): SHA-256 of the base URL and the identity.
    public static func credentialsKey(baseURL: String, identity: String) -> String {
        let digest = SHA256.hash(data: Data("\(baseURL)\n\(identity)".utf8))
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}
