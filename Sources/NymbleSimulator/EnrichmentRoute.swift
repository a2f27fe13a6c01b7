import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NymbleAPI

/// How one dialect spells its enrichment call (Nymble's `/api/auth/access`, B2B's `/api/v2/commerce/lookup`,
/// AchieveApex's `/commerce-context`): the request's field names and the bodies of its answers. One handler,
/// ``NymbleSimulator/enrichment(_:_:context:)``, serves all three with the same knobs and counters.
struct EnrichmentWire: Sendable {
    /// Request body fields holding the organization and the user id.
    var organizationField: String
    var userField: String
    /// Answer fields holding the customer number, the price tier and the currency code.
    var customerNumberField: String
    var priceTierField: String
    var currencyCodeField: String
    /// Body of a 429 from the rate limit.
    var rateLimitedBody: String
    /// Body of a 401; `expired` says whether the token had expired (rather than being missing, unknown or
    /// revoked).
    var unauthorizedBody: @Sendable (_ expired: Bool) -> String
    /// Body of a 400 for a missing or malformed id.
    var badRequestBody: String
    /// Body of an injected 500, 502 or 503.
    var serverErrorBody: @Sendable (HTTPResponse.Status) -> String

    static let nymble = EnrichmentWire(
        organizationField: "OrganizationId",
        userField: "UserId",
        customerNumberField: "CustomerNumber",
        priceTierField: "PriceTier",
        currencyCodeField: "CurrencyCode",
        rateLimitedBody: #"{"error":"rate limited"}"#,
        unauthorizedBody: { _ in #"{"error":"invalid token"}"# },
        badRequestBody: #"{"error":"OrganizationId or UserId missing or malformed"}"#,
        serverErrorBody: { _ in #"{"error":"try again"}"# }
    )

    static let b2b = EnrichmentWire(
        organizationField: "organization_id",
        userField: "user_id",
        customerNumberField: "customer_number",
        priceTierField: "price_tier",
        currencyCodeField: "currency",
        rateLimitedBody: B2BError.body("too_many_requests", "rate limited"),
        unauthorizedBody: { expired in B2BError.body("unauthorized", expired ? "token expired" : "invalid token") },
        badRequestBody: B2BError.body("validation_error", "organization_id and user_id are required"),
        serverErrorBody: { _ in B2BError.body("server_error", "try again") }
    )

    static let achieveApex = EnrichmentWire(
        organizationField: "organizationId",
        userField: "userId",
        customerNumberField: "customerNumber",
        priceTierField: "priceTier",
        currencyCodeField: "currencyCode",
        rateLimitedBody: FeathersError.tooManyRequests.body("Too many requests"),
        unauthorizedBody: { expired in
            FeathersError.notAuthenticated.body(expired ? "jwt expired" : "Invalid authentication information")
        },
        badRequestBody: FeathersError.badRequest.body("organizationId and userId are required"),
        serverErrorBody: { status in FeathersError(status: status).body("Try again") }
    )
}

/// The pair of an enrichment call, read under the field names of an ``EnrichmentWire`` (passed in the
/// decoder's user info). A field that is absent or null is nil; one that is not a string fails the decoding.
private struct PairBody: Decodable {
    static let wireKey = CodingUserInfoKey(rawValue: "enrichmentWire")!

    struct Field: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ name: String) { self.stringValue = name }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    let organizationId: String?
    let userId: String?

    init(from decoder: any Decoder) throws {
        guard let wire = decoder.userInfo[Self.wireKey] as? EnrichmentWire else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "no field names given"))
        }
        let container = try decoder.container(keyedBy: Field.self)
        organizationId = try container.decodeIfPresent(String.self, forKey: Field(wire.organizationField))
        userId = try container.decodeIfPresent(String.self, forKey: Field(wire.userField))
    }

    static func decode(_ body: ByteBuffer, as wire: EnrichmentWire) -> PairBody? {
        let decoder = JSONDecoder()
        decoder.userInfo[wireKey] = wire
        return try? decoder.decode(PairBody.self, from: Data(buffer: body))
    }
}

extension NymbleSimulator {
    /// The enrichment call of every dialect: rate limit (429), bearer token (401), ids (400), then the
    /// injected faults and the ``CommerceDirectory`` answer, counted in the `access*` stats.
    func enrichment(_ wire: EnrichmentWire, _ request: Request, context: SimulatorContext) async throws -> Response {
        state.enter()
        defer { state.leave() }
        let slow = configuration.slowRate > 0 && Double.random(in: 0..<1) < configuration.slowRate
        try await delay(slow: slow)
        if let wait = state.admitAccess() {
            state.update { $0.access429 += 1 }
            var headers = HTTPFields()
            if configuration.retryAfterStyle == .seconds {
                headers[.retryAfter] = String(max(1, Int(wait.inSeconds.rounded(.up))))
            } else if configuration.retryAfterStyle == .httpDate {
                headers[.retryAfter] = RetryAfter.format(Date().addingTimeInterval(max(1, wait.inSeconds.rounded(.up))))
            }
            return Self.json(.tooManyRequests, wire.rateLimitedBody, headers: headers)
        }
        let check = state.check(bearer: Self.bearer(request))
        guard check == .valid else {
            state.update { $0.access401 += 1 }
            return Self.json(.unauthorized, wire.unauthorizedBody(check == .expired))
        }
        let body = try await request.body.collect(upTo: 64 * 1024)
        guard let pair = PairBody.decode(body, as: wire),
            let organizationId = pair.organizationId, let userId = pair.userId,
            CommerceDirectory.isWellFormed(organizationId), CommerceDirectory.isWellFormed(userId)
        else {
            state.update { $0.access400 += 1 }
            return Self.json(.badRequest, wire.badRequestBody)
        }
        state.recordArrival(userId: userId)
        if configuration.dropRate > 0 && Double.random(in: 0..<1) < configuration.dropRate {
            state.update { $0.accessDropped += 1 }
            try await context.channel.close()
            throw HTTPError(.internalServerError)
        }
        if configuration.serverErrorRate > 0 && Double.random(in: 0..<1) < configuration.serverErrorRate {
            state.update { $0.access5xx += 1 }
            let status: HTTPResponse.Status = [.internalServerError, .badGateway, .serviceUnavailable].randomElement()!
            return Self.json(status, wire.serverErrorBody(status))
        }
        let answer = CommerceDirectory.context(organizationId: organizationId, userId: userId)
        state.update { $0.access200 += 1 }
        return Self.json(
            .ok,
            "{\"\(wire.customerNumberField)\":\(Self.jsonValue(answer.customerNumber)),"
                + "\"\(wire.priceTierField)\":\(Self.jsonValue(answer.priceTier)),"
                + "\"\(wire.currencyCodeField)\":\(Self.jsonValue(answer.currencyCode))}"
        )
    }
}
