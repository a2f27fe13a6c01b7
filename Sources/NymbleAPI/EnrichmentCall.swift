/// The answer's members that become the three written columns.
public struct AnswerFields: Sendable, Hashable {
    public var customerNumber: String
    public var priceTier: String
    public var currencyCode: String

    public init(customerNumber: String, priceTier: String, currencyCode: String) {
        self.customerNumber = customerNumber
        self.priceTier = priceTier
        self.currencyCode = currencyCode
    }

    /// Nymble's `/api/auth/access` answer.
    public static let nymble = AnswerFields(
        customerNumber: "CustomerNumber",
        priceTier: "PriceTier",
        currencyCode: "CurrencyCode"
    )
}

/// The enrichment call of an API profile: its method and path, the request's names for the pair, and the
/// answer's members for the three columns (each a string or null; null is written as null). The pair goes
/// in a JSON body (`{"<organization>": ..., "<user>": ...}`), or in the query string for GET.
public struct EnrichmentCall: Sendable, Hashable {
    public enum Method: String, Sendable, Hashable, CaseIterable {
        case post = "POST"
        case put = "PUT"
        case patch = "PATCH"
        case get = "GET"
    }

    public var method: Method
    /// Appended to the base URL; starts with `/`.
    public var path: String
    public var organizationField: String
    public var userField: String
    public var answer: AnswerFields

    public init(method: Method, path: String, organizationField: String, userField: String, answer: AnswerFields) {
        self.method = method
        self.path = path
        self.organizationField = organizationField
        self.userField = userField
        self.answer = answer
    }

    /// Nymble's `POST /api/auth/access` with `OrganizationId` and `UserId`: the default profile's call.
    public static let nymble = EnrichmentCall(
        method: .post,
        path: "/api/auth/access",
        organizationField: "OrganizationId",
        userField: "UserId",
        answer: .nymble
    )
}
