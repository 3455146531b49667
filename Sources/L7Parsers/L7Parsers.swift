/// Pure protocol parsers: bytes in, operations out. Never touch sockets or policy.
public enum L7Parsers {}
