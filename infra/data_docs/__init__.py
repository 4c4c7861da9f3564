"""The Data Docs pages' scripts, styles and fonts from Maven Central (WebJars), for pages that render offline."""
