import AsyncHTTPClient

public enum Y {}
