"""SIP for phones and trunks: parsing, transactions, dialogs, registrar (sans-IO),
and the sockets around them."""
