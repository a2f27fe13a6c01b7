public enum Y3 {}
