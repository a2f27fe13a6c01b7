/// How an API logs in, renews and logs out (`../shared/api-contract.md`): the three dialects enrich speaks.
public enum APIDialect: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Nymble Commerce (section 1): `POST /api/auth/login` with OrgCode, ClientId and ClientSecret; the
    /// lifetime in `ExpiresIn`; no refresh token, no logout.
    case nymble
    /// The B2B password-login API (section 2): `POST /auth/login` with username and password; absolute
    /// expiries; a refresh token that rotates on every refresh.
    case b2b
    /// AchieveApex (section 3): Feathers-style `POST /authentication` (`local` strategy), the expiry in the
    /// JWT's `exp` claim, `DELETE /authentication` to log out.
    case achieveApex = "achieveapex"

    public var description: String { rawValue }
}
