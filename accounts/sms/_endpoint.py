from urllib.parse import urlsplit


def split_endpoint(value: str) -> tuple[str, str]:
    """``"https://host:port"`` or ``"host"`` → ``("https", "host:port")``.

    Operators normally give a bare host name; tests give ``http://127.0.0.1:<port>``
    to point an SDK at a local fake of the provider.
    """
    if "://" not in value:
        return "https", value
    parts = urlsplit(value)
    return parts.scheme, parts.netloc
