from twisted.application.service import ServiceMaker

leafpds = ServiceMaker(
    "leafpds",
    "leafpds.tap",
    "An AT Protocol Personal Data Server.",
    "leafpds",
)
