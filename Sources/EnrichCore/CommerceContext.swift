/// The commerce context of a pair, as `POST /api/auth/access` answers it and as it is written back. Each
/// field may be null, and nulls stay nulls (a written row with all three null is distinct from an
/// unenriched one).
public struct CommerceContext: Sendable, Hashable, Codable {
    public var customerNumber: String?
    public var priceTier: String?
    public var currencyCode: String?

    public init(customerNumber: String?, priceTier: String?, currencyCode: String?) {
        self.customerNumber = customerNumber
        self.priceTier = priceTier
        self.currencyCode = currencyCode
    }

    enum CodingKeys: String, CodingKey {
        case customerNumber = "CustomerNumber"
        case priceTier = "PriceTier"
        case currencyCode = "CurrencyCode"
    }
    /// Decodes explicitly so that a missing key is an error, not silently null: the contract says the three
    /// fields are always present (with null values when unknown).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        for key in [CodingKeys.customerNumber, .priceTier, .currencyCode] where !container.contains(key) {
            throw DecodingError.keyNotFound(
                key,
                .init(codingPath: container.codingPath, debugDescription: "missing \(key.stringValue)")
            )
        }
        customerNumber = try container.decode(String?.self, forKey: .customerNumber)
        priceTier = try container.decode(String?.self, forKey: .priceTier)
        currencyCode = try container.decode(String?.self, forKey: .currencyCode)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(customerNumber, forKey: .customerNumber)
        try container.encode(priceTier, forKey: .priceTier)
        try container.encode(currencyCode, forKey: .currencyCode)
    }
}
