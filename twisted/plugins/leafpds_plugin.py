from twisted.application.service import ServiceMaker

leafpds = ServiceMaker(
    "leafpds",
    "leafpds.tap",
    "An AT Protocol Personal Data Server.",
    "leafpds",
)

leafpds_plc = ServiceMaker(
    "leafpds-plc",
    "leafpds.identity.plc_tap",
    "A did:plc directory for development and tests.",
    "leafpds-plc",
)
